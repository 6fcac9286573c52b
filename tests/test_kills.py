"""What a kill -9 leaves behind, and that the next run of the same command cleans it up and ends
where an uninterrupted run ends.

The kills are real: a subprocess runs the command with ``FLAT_KILL_AT=POINT[@N]`` and SIGKILLs
itself the N-th time it reaches POINT (:func:`flat.io.kill_point`): ``open:NAME`` (the temporary
file of NAME just created, empty), ``write:NAME`` (written whole, not yet renamed), ``recon:volume``
(after a volume's file is in place).
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.fastmri_files import make_fastmri_file, make_tiny_splits, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _run_killed(argv, point):
    env = dict(os.environ, FLAT_KILL_AT=point, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FLAT_BACKEND", None)
    p = subprocess.run([sys.executable, "-m", "flat", *map(str, argv)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=300)
    assert p.returncode == -signal.SIGKILL, f"not killed at {point}: exit {p.returncode}\n{p.stderr[-2000:]}"


def _temps(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def _recon(path):
    with h5py.File(path, "r") as f:
        return f["reconstruction"][()]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill_data")
    for i in range(3):
        make_fastmri_file(d / "in" / f"v{i}.h5", S=2, seed=i)
    return d


ZF = ["--method", "zero-filled", "--no-progress"]


@pytest.mark.parametrize("point,left", [
    ("open:v0.h5", {"temps": [".v0.h5.tmp"], "done": []}),                   # empty temporary
    ("write:v1.h5", {"temps": [".v1.h5.tmp"], "done": ["v0.h5"]}),            # complete, never renamed
    ("recon:volume@2", {"temps": [], "done": ["v0.h5", "v1.h5"]}),            # between two volumes
])
def test_recon_rerun_after_kill_finishes_the_rest(point, left, volumes, tmp_path, capsys, monkeypatch):
    ref = tmp_path / "ref"
    assert run_cli(["recon", "-", volumes / "in", ref, *ZF], monkeypatch) == 0
    out = tmp_path / "out"
    _run_killed(["recon", "-", volumes / "in", out, *ZF], point)
    assert _temps(out) == left["temps"]
    assert sorted(p.name for p in out.glob("*.h5")) == left["done"]
    stamps = {n: (out / n).stat().st_mtime_ns for n in left["done"]}
    capsys.readouterr()
    assert run_cli(["recon", "-", volumes / "in", out, *ZF], monkeypatch) == 0  # the same command again
    err = capsys.readouterr().err
    if left["done"]:
        assert f"{len(left['done'])} volume(s) already complete" in err
    assert sorted(p.name for p in out.iterdir()) == ["v0.h5", "v1.h5", "v2.h5"]  # no stray file
    for n, t in stamps.items():  # skipped, not redone
        assert (out / n).stat().st_mtime_ns == t
    for i in range(3):
        np.testing.assert_array_equal(_recon(out / f"v{i}.h5"), _recon(ref / f"v{i}.h5"))
    # --overwrite redoes them all, with the same result
    assert run_cli(["recon", "-", volumes / "in", out, *ZF, "--overwrite"], monkeypatch) == 0
    assert "already complete" not in capsys.readouterr().err
    np.testing.assert_array_equal(_recon(out / "v0.h5"), _recon(ref / "v0.h5"))


def test_recon_removes_temps_of_earlier_versions(volumes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for n in (".v0.h5.tmp", ".v1.h5.k2j4x9aa.tmp", ".notes.txt.tmp"):  # ours (two styles), and another's
        (out / n).write_bytes(b"partial")
    assert run_cli(["recon", "-", volumes / "in", out, *ZF], monkeypatch) == 0
    assert _temps(out) == [".notes.txt.tmp"]


def test_recon_refuses_output_of_other_settings(volumes, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(["recon", "-", volumes / "in", out, *ZF], monkeypatch) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert run_cli(["recon", "-", volumes / "in", out, *ZF, "--accelerations", "8", "--center-fractions", "0.04"],
                   monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v0.h5" in err[0] and "--overwrite" in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_train_kill_at_epoch_end_checkpoint(tmp_path, monkeypatch):
    """Killed while writing the checkpoint that follows a validation: the rerun redoes that
    validation, and metrics.jsonl still holds each record once; the final model is bit-identical to
    an uninterrupted run and no temporary file is left."""
    from flat.config import apply_overrides, get_preset
    from flat.train import MODEL_FILE, train

    data = make_tiny_splits(tmp_path / "data")
    sets = ["train.threads=1", "train.epochs=3", "train.checkpoint_every=1000", "train.val_every=1",
            "train.log_every=1000"]
    ref = train(apply_overrides(get_preset("tiny"), sets), data / "train", data / "val", tmp_path / "ref",
                progress=False, echo=False)
    argv = ["train", "--train", data / "train", "--val", data / "val", "--out", tmp_path / "run", "--preset",
            "tiny", "--no-progress"] + [a for s in sets for a in ("--set", s)]
    _run_killed(argv, "write:last.pt@2")  # the end of epoch 1: validated at step 8, checkpoint not renamed
    run = tmp_path / "run"
    assert _temps(run) == [".last.pt.tmp"]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8]  # the record the state in last.pt (step 4) does not know of
    (run / ".model.pt.x81kq2ab.tmp").write_bytes(b"partial")  # as an earlier version named its temps
    assert run_cli([str(a) for a in argv], monkeypatch) == 0
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref_recs = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [r["step"] for r in ref_recs] == [4, 8, 12]
    assert [r["PSNR"] for r in recs] == [r["PSNR"] for r in ref_recs]
    assert _temps(run) == []
    a = torch.load(run / MODEL_FILE, weights_only=True)["model"]
    b = ref["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
