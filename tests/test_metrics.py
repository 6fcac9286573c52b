"""fastMRI metrics and the `flat eval` command."""
import json

import h5py
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from flat import metrics
from tests.fastmri_files import FASTMRI_REASON, HAS_FASTMRI, make_fastmri_file, run_cli


def _vols(seed=0, shape=(3, 32, 32)):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape).astype(np.float32)
    pred = (gt + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return gt, pred


def test_definitions():
    gt, pred = _vols()
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    assert metrics.nmse(gt, pred) == pytest.approx(np.sum((g - p) ** 2) / np.sum(g**2), rel=1e-5)
    mse = np.mean((g - p) ** 2)
    assert metrics.psnr(gt, pred, 2.0) == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-5)
    want = np.mean([structural_similarity(gt[s], pred[s], data_range=gt.max()) for s in range(3)])
    assert metrics.ssim(gt, pred) == pytest.approx(want, rel=1e-12)
    assert metrics.ssim(gt, gt) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        metrics.nmse(gt, pred[:2])
    with pytest.raises(ValueError, match="3 dims"):
        metrics.ssim(gt[0], pred[0])


@pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)
def test_equal_to_fastmri_evaluate():
    from fastmri import evaluate as fe

    gt, pred = _vols(1)
    for maxval in (None, 1.3):
        assert metrics.nmse(gt, pred) == pytest.approx(float(fe.nmse(gt, pred)), rel=1e-12)
        assert metrics.psnr(gt, pred, maxval) == pytest.approx(float(fe.psnr(gt, pred, maxval)), rel=1e-12)
        assert metrics.ssim(gt, pred, maxval) == pytest.approx(float(fe.ssim(gt, pred, maxval)[0]), rel=1e-12)


def _write_pred(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("reconstruction", data=arr.astype(np.float32))


def _setup(tmp_path):
    tg, pr = tmp_path / "targets", tmp_path / "preds"
    for i in range(2):
        t = make_fastmri_file(tg / f"v{i}.h5", S=2, seed=i)
        with h5py.File(t, "r") as f:
            target = f["reconstruction_rss"][()]
        rng = np.random.default_rng(i)
        big = np.zeros((2, 20, 18), np.float32)  # predictions larger than the target: centre-cropped
        big[:, 2:18, 1:17] = target + 0.02 * target.max() * rng.standard_normal(target.shape)
        _write_pred(pr / f"v{i}.h5", big)
    return pr, tg


def test_evaluate_folders_and_cli(tmp_path, capsys, monkeypatch):
    pr, tg = _setup(tmp_path)
    res = metrics.evaluate_folders(pr, tg)
    assert res["num_volumes"] == 2 and set(res["volumes"]) == {"v0.h5", "v1.h5"}
    with h5py.File(tg / "v0.h5", "r") as f, h5py.File(pr / "v0.h5", "r") as g:
        t, mx = f["reconstruction_rss"][()], f.attrs["max"]
        p = g["reconstruction"][()][:, 2:18, 1:17]
    v0 = res["volumes"]["v0.h5"]
    assert v0["PSNR"] == pytest.approx(metrics.psnr(t, p, mx)) and v0["SSIM"] == pytest.approx(metrics.ssim(t, p, mx))
    assert res["mean"]["NMSE"] == pytest.approx(np.mean([v["NMSE"] for v in res["volumes"].values()]))
    assert run_cli(["eval", pr, tg, "--json", tmp_path / "m.json"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "v0.h5" in out and "mean" in out and "PSNR" in out
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["mean"]["SSIM"] == pytest.approx(res["mean"]["SSIM"])


@pytest.mark.skipif(not HAS_FASTMRI, reason=FASTMRI_REASON)
def test_evaluate_matches_fastmri_script(tmp_path):
    import argparse

    from fastmri import evaluate as fe

    pr, tg = _setup(tmp_path)
    theirs = fe.evaluate(argparse.Namespace(target_path=tg, predictions_path=pr, acquisition=None,
                                            acceleration=None), "reconstruction_rss").means()
    ours = metrics.evaluate_folders(pr, tg, data_range="volume")["mean"]
    for k in ("NMSE", "PSNR", "SSIM"):
        assert ours[k] == pytest.approx(float(np.asarray(theirs[k]).reshape(-1)[0]), rel=1e-9)


def test_eval_errors(tmp_path, capsys, monkeypatch):
    pr, tg = _setup(tmp_path)
    j = tmp_path / "m.json"
    assert run_cli(["eval", tmp_path / "nope", tg, "--json", j], monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flat eval: error:") and "nope" in err[0]
    (pr / "v1.h5").unlink()
    assert run_cli(["eval", pr, tg, "--json", j], monkeypatch) == 1
    assert "no prediction for target v1.h5" in capsys.readouterr().err
    _write_pred(pr / "v1.h5", np.zeros((3, 16, 16)))
    assert run_cli(["eval", pr, tg, "--json", j], monkeypatch) == 1
    assert "does not match target" in capsys.readouterr().err
    with h5py.File(pr / "v1.h5", "w") as f:
        f.create_dataset("recon", data=np.zeros((2, 16, 16)))
    assert run_cli(["eval", pr, tg, "--json", j], monkeypatch) == 1
    assert "missing dataset 'reconstruction'" in capsys.readouterr().err
    from tests.fastmri_files import truncate

    _write_pred(pr / "v1.h5", np.zeros((2, 16, 16)))
    truncate(pr / "v1.h5", 0.3)
    assert run_cli(["eval", pr, tg, "--json", j], monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v1.h5" in err[0] and "truncated or corrupt" in err[0]
    assert not j.exists() and not list(tmp_path.glob(".m.json*"))  # no partial JSON
