"""Bad command lines are refused before any work: non-zero exit, one line on stderr naming the file /
flag / field, no traceback, and nothing written -- not a file, not a folder (OUT is not created).

Also: non-finite k-space can be zeroed on request (saying how many), ``flat eval`` refuses
non-finite predictions, a full disk and a permission problem are said in words with the path.
"""
import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.fastmri_files import header_xml, make_fastmri_file, make_tiny_fastmri, run_cli


def _snapshot(root: Path) -> set:
    return {(str(p.relative_to(root)), p.is_dir()) for p in root.rglob("*")}


def _edit(path, **datasets):
    """Replace datasets of a file (``None`` deletes one)."""
    with h5py.File(path, "a") as f:
        for name, value in datasets.items():
            if name in f:
                del f[name]
            if value is not None:
                f.create_dataset(name, data=value)
    return path


def _kspace(path):
    with h5py.File(path, "r") as f:
        return f["kspace"][()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs every case may use (read-only): good files, tiny training data, a prediction and a
    trained-looking checkpoint."""
    from flat.config import get_preset
    from flat.recon import write_submission

    w = tmp_path_factory.mktemp("world")
    make_fastmri_file(w / "data" / "a.h5", S=2, seed=1)
    make_tiny_fastmri(w / "train", n_vols=2, slices=2, seed=0)
    make_tiny_fastmri(w / "val", n_vols=1, slices=2, seed=1, prefix="val")
    write_submission(w / "pred" / "a.h5", np.ones((2, 16, 16), np.float32))
    (w / "afile").write_text("not a folder")
    (w / "empty").mkdir()
    cfg = get_preset("tiny").to_dict()
    torch.save({"kind": "flat-model", "version": 1, "config": cfg, "meta": {}}, w / "noweights.pt")
    bad = {**cfg, "model": {**cfg["model"], "no_such_key": 1}}
    torch.save({"kind": "flat-model", "version": 1, "config": bad, "model": {"w": torch.ones(1)}, "meta": {}},
               w / "unknownkey.pt")
    (w / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"kind": "flat-train-state", "version": 1, "config": get_preset("default").to_dict(),
                "model": {"w": torch.ones(1)}}, w / "otherstate.pt")
    return w


def _bad_file(kind):
    """A builder of one bad fastMRI file in folder ``d``; returns the file."""
    def build(d):
        if kind == "mask-ok":  # a valid test-split file (undersampled, no target)
            m = np.zeros(20, bool)
            m[8:12] = True
            return make_fastmri_file(d / "test.h5", mask=m)
        p = make_fastmri_file(d / f"{kind}.h5", S=2)
        k = _kspace(p)
        if kind == "nan":
            k[1, 0, 3, 3] = np.nan
            _edit(p, kspace=k)
        elif kind == "inf":
            k[0, 1, 2, 5] = np.inf
            _edit(p, kspace=k)
        elif kind == "S0":
            _edit(p, kspace=k[:0], reconstruction_rss=None)
        elif kind == "C0":
            _edit(p, kspace=k[:, :0])
        elif kind == "HW0":
            _edit(p, kspace=k[:, :, :0, :0])
        elif kind == "single-coil":
            _edit(p, kspace=k[:, 0])
        elif kind == "real":
            _edit(p, kspace=k.real)
        elif kind == "no-kspace":
            _edit(p, kspace=None)
        elif kind == "no-header":
            _edit(p, ismrmrd_header=None)
        elif kind == "bad-xml":
            _edit(p, ismrmrd_header=np.bytes_(b"<ismrmrdHeader><encoding>"))
        elif kind == "centre-beyond-width":
            _edit(p, ismrmrd_header=np.bytes_(header_xml((24, 20, 1), (16, 16, 1), center=100, maximum=19)))
        elif kind == "matrix-mismatch":
            _edit(p, ismrmrd_header=np.bytes_(header_xml((320, 320, 1), (16, 16, 1))))
        elif kind == "matrix-negative":
            _edit(p, ismrmrd_header=np.bytes_(header_xml((24, 20, 1), (-5, 0, 1))))
        elif kind == "mask-zero":
            _edit(p, mask=np.zeros(20, bool), reconstruction_rss=None)
        elif kind == "mask-length":
            _edit(p, mask=np.ones(7, bool), reconstruction_rss=None)
        elif kind == "truncated":
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])
        return p
    return build


ZF = ["--method", "zero-filled", "--no-progress"]

# (id, words the one line must hold, builder(tmp, world) -> argv). Builders create inputs in tmp/in;
# the snapshot is taken after them, so only what the command itself writes counts.
CASES = [
    # ---- flat recon: DATA
    ("recon-data-missing", ["missing", "no such file"], lambda t, w: ["recon", "-", t / "missing", t / "out", *ZF]),
    ("recon-data-empty", ["no .h5"], lambda t, w: ["recon", "-", w / "empty", t / "out", *ZF]),
] + [
    (f"recon-{kind}", words, (lambda kind: lambda t, w: ["recon", "-", _bad_file(kind)(t / "in"), t / "out", *ZF])(kind))
    for kind, words in [
        ("nan", ["nan.h5", "slice 1", "'kspace'", "1 non-finite", "--zero-nonfinite"]),
        ("S0", ["S0.h5", "S, C, H, W >= 1"]),
        ("C0", ["C0.h5", "S, C, H, W >= 1"]),
        ("HW0", ["HW0.h5", "S, C, H, W >= 1"]),
        ("single-coil", ["single-coil.h5", "multicoil"]),
        ("real", ["real.h5", "complex"]),
        ("no-kspace", ["no-kspace.h5", "missing dataset 'kspace'"]),
        ("no-header", ["no-header.h5", "ismrmrd_header"]),
        ("bad-xml", ["bad-xml.h5", "not valid XML"]),
        ("centre-beyond-width", ["centre-beyond-width.h5", "kspace_encoding_step_1", "center = 100", "W = 20"]),
        ("matrix-mismatch", ["matrix-mismatch.h5", "encodedSpace", "(320, 320)", "(24, 20)"]),
        ("matrix-negative", ["matrix-negative.h5", "reconSpace", "(-5, 0, 1)", ">= 1"]),
        ("mask-zero", ["mask-zero.h5", "'mask'", "centre"]),
        ("mask-length", ["mask-length.h5", "'mask'", "(20,)"]),
        ("truncated", ["truncated.h5", "HDF5"]),
    ]
] + [
    ("recon-inf-cg-sense", ["inf.h5", "slice 0", "non-finite"],
     lambda t, w: ["recon", "-", _bad_file("inf")(t / "in"), t / "out", "--method", "cg-sense", "--no-progress"]),
    # ---- flat recon: flags
    ("recon-acceleration-too-high", ["--accelerations 1000", "a.h5", "W = 20"],
     lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--accelerations", "1000"]),
    ("recon-centre-fraction-too-small", ["--center-fractions 0.01", "round(W*F) = 0"],
     lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--center-fractions", "0.01"]),
    ("recon-acceleration-1", ["--accelerations", "> 1"],
     lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--accelerations", "1"]),
    ("recon-acc-cf-lengths", ["--accelerations", "--center-fractions"],
     lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--accelerations", "4", "8"]),
    ("recon-batch-0", ["--batch-size"], lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--batch-size", "0"]),
    ("recon-cg-iters-negative", ["--cg-iters"],
     lambda t, w: ["recon", "-", w / "data", t / "out", "--method", "cg-sense", "--cg-iters", "-1"]),
    ("recon-device-nonsense", ["--device"], lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--device", "gpu7"]),
    ("recon-backend-unknown", ["--backend", "magic"],
     lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--backend", "magic"]),
    ("recon-method-unknown", ["--method", "invalid choice"],
     lambda t, w: ["recon", "-", w / "data", t / "out", "--method", "magic"]),
    ("recon-mask-type-unknown", ["--mask-type"],
     lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--mask-type", "spiral"]),
    ("recon-batch-not-int", ["--batch-size"],
     lambda t, w: ["recon", "-", w / "data", t / "out", *ZF, "--batch-size", "two"]),
    # ---- flat recon: OUT
    ("recon-out-is-file", ["afile", "not a folder", "OUT"], lambda t, w: ["recon", "-", w / "data", w / "afile", *ZF]),
    ("recon-out-under-file", ["afile", "is a file", "OUT"],
     lambda t, w: ["recon", "-", w / "data", w / "afile" / "sub", *ZF]),
    ("recon-out-is-data", ["overwrite the input"], lambda t, w: ["recon", "-", w / "data", w / "data", *ZF]),
    ("recon-output-name-is-folder", ["a.h5", "is a folder"],
     lambda t, w: ["recon", "-", w / "data", _folder(t / "in" / "out" / "a.h5").parent, *ZF, "--overwrite"]),
    # ---- flat recon: CHECKPOINT
    ("recon-flat-without-checkpoint", ["CHECKPOINT"], lambda t, w: ["recon", "-", w / "data", t / "out"]),
    ("recon-checkpoint-missing", ["nope.pt"], lambda t, w: ["recon", t / "nope.pt", w / "data", t / "out"]),
    ("recon-checkpoint-garbage", ["garbage.pt", "not a torch checkpoint"],
     lambda t, w: ["recon", w / "garbage.pt", w / "data", t / "out"]),
    ("recon-checkpoint-empty", ["empty.pt", "not a torch checkpoint"],
     lambda t, w: ["recon", _file(t / "in" / "empty.pt", b""), w / "data", t / "out"]),
    ("recon-checkpoint-truncated", ["half.pt", "truncated"],
     lambda t, w: ["recon", _file(t / "in" / "half.pt", (w / "noweights.pt").read_bytes()[:300]), w / "data",
                   t / "out"]),
    ("recon-good-then-nan", ["b_nan.h5", "non-finite"],  # nothing written, not even the good volume
     lambda t, w: ["recon", "-", _two_files(t / "in"), t / "out", *ZF]),
    ("recon-checkpoint-no-weights", ["noweights.pt", "no weights"],
     lambda t, w: ["recon", w / "noweights.pt", w / "data", t / "out"]),
    ("recon-checkpoint-unknown-key", ["unknownkey.pt", "no_such_key"],
     lambda t, w: ["recon", w / "unknownkey.pt", w / "data", t / "out"]),
    # ---- flat eval
    ("eval-predictions-missing", ["predictions"], lambda t, w: ["eval", t / "nopred", w / "val"]),
    ("eval-targets-missing", ["targets"], lambda t, w: ["eval", w / "pred", t / "notgt"]),
    ("eval-no-prediction-for-target", ["val00.h5", "no prediction"], lambda t, w: ["eval", w / "pred", w / "val"]),
    ("eval-json-is-folder", ["--json", "is a folder"], lambda t, w: ["eval", w / "pred", w / "data", "--json", w / "empty"]),
    ("eval-json-under-file", ["--json", "afile", "not a folder"],
     lambda t, w: ["eval", w / "pred", w / "data", "--json", w / "afile" / "m.json"]),
    ("eval-nan-prediction", ["a.h5", "slice 1", "'reconstruction'", "non-finite"],
     lambda t, w: ["eval", _nan_prediction(t / "in"), w / "data" / "a.h5"]),
    ("eval-prediction-empty", ["a.h5", "'reconstruction'", "(0, 16, 16)"],
     lambda t, w: ["eval", _prediction(t / "in", np.ones((0, 16, 16), np.float32)), w / "data" / "a.h5"]),
    ("eval-prediction-2d", ["a.h5", "'reconstruction'", "(S, H, W)"],
     lambda t, w: ["eval", _prediction(t / "in", np.ones((16, 16), np.float32)), w / "data" / "a.h5"]),
    ("eval-prediction-wrong-shape", ["a.h5", "shape"],
     lambda t, w: ["eval", _prediction(t / "in", np.ones((3, 16, 16), np.float32)), w / "data" / "a.h5"]),
    # ---- flat train
    ("train-train-missing", ["--train", "nowhere"], lambda t, w: _train(t, w, train=t / "nowhere")),
    ("train-train-empty", ["--train", "no .h5"], lambda t, w: _train(t, w, train=w / "empty")),
    ("train-val-missing", ["--val", "nowhere"], lambda t, w: _train(t, w, val=t / "nowhere")),
    ("train-batch-larger-than-data", ["train.batch_size = 64", "4 slice"],
     lambda t, w: _train(t, w, "--set", "train.batch_size=64")),
    ("train-test-split-files", ["--train", "reconstruction_rss"],
     lambda t, w: _train(t, w, train=_bad_file("mask-ok")(t / "in"))),
    ("train-header-centre-beyond-width", ["--train", "centre-beyond-width.h5", "kspace_encoding_step_1"],
     lambda t, w: _train(t, w, train=_bad_file("centre-beyond-width")(t / "in"))),
    ("train-acceleration-too-high", ["data.accelerations 1000"],
     lambda t, w: _train(t, w, "--set", "data.accelerations=1000", "--set", "data.center_fractions=0.08")),
    ("train-backend-unknown", ["--backend", "magic"], lambda t, w: _train(t, w, "--backend", "magic")),
    ("recon-cg-lam-nan", ["--tikhonov", ">= 0"],
     lambda t, w: ["recon", "-", w / "data", t / "out", "--method", "cg-sense", "--cg-lam", "nan"]),
    ("train-device-nonsense", ["--device"], lambda t, w: _train(t, w, "--device", "tpu")),
    ("train-unknown-key", ["model.nope"], lambda t, w: _train(t, w, "--set", "model.nope=1")),
    ("train-config-missing", ["--config"], lambda t, w: _train(t, w, "--config", t / "none.json")),
    ("train-preset-unknown", ["preset"], lambda t, w: _train(t, w, "--preset", "huge")),
    ("train-out-is-file", ["afile", "--out"], lambda t, w: _train(t, w, out=w / "afile")),
    ("train-state-of-other-config", ["--out", "different config"],
     lambda t, w: _train(t, w, out=_file(t / "run" / "last.pt", (w / "otherstate.pt").read_bytes()).parent)),
    ("train-corrupt-state", ["last.pt", "not a torch checkpoint"],
     lambda t, w: _train(t, w, out=_file(t / "run" / "last.pt", b"garbage").parent)),
    ("train-out-under-file", ["afile", "--out"], lambda t, w: _train(t, w, out=w / "afile" / "run")),
    # ---- flat data demo
    ("data-demo-matrix-0", ["--matrix", ">= 1"], lambda t, w: ["data", "demo", t / "demo", "--matrix", "0"]),
    ("data-demo-coils-0", ["--coils", ">= 1"], lambda t, w: ["data", "demo", t / "demo", "--coils", "0"]),
    ("data-demo-matrix-too-big", ["matrix", "160"], lambda t, w: ["data", "demo", t / "demo", "--matrix", "500"]),
    ("data-demo-out-is-file", ["afile", "not a folder"], lambda t, w: ["data", "demo", w / "afile"]),
    # ---- flat demo
    ("demo-data-missing", ["--data", "no train/"], lambda t, w: ["demo", "--out", t / "d", "--data", t / "nowhere"]),
    ("demo-data-no-splits", ["--data", "no train/"], lambda t, w: ["demo", "--out", t / "d", "--data", w / "empty"]),
    ("demo-out-is-file", ["afile", "--out"], lambda t, w: ["demo", "--out", w / "afile"]),
    ("demo-unknown-key", ["model.nope"], lambda t, w: ["demo", "--out", t / "d", "--set", "model.nope=1"]),
    ("demo-steps-0", ["--steps"], lambda t, w: ["demo", "--out", t / "d", "--steps", "0"]),
    # ---- the command itself
    ("no-command", ["COMMAND"], lambda t, w: []),
    ("unknown-command", ["invalid choice"], lambda t, w: ["reconstruct"]),
]


def _file(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _folder(path):
    path.mkdir(parents=True)
    return path


def _two_files(d):
    make_fastmri_file(d / "a_good.h5", S=2)
    p = make_fastmri_file(d / "b_nan.h5", S=2)
    k = _kspace(p)
    k[0, 0, 0, 0] = np.nan
    _edit(p, kspace=k)
    return d


def _prediction(d, recon):
    from flat.recon import write_submission

    return write_submission(Path(d) / "a.h5", recon)


def _nan_prediction(d):
    r = np.ones((2, 16, 16), np.float32)
    r[1, 3, 4] = np.nan
    return _prediction(d, r)


def _train(t, w, *extra, train=None, val=None, out=None):
    return ["train", "--train", train or w / "train", "--val", val or w / "val", "--out", out or t / "run",
            "--preset", "tiny", "--no-progress", *extra]


def test_table_is_big_enough():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,words,build", CASES, ids=[c[0] for c in CASES])
def test_bad_command_line(name, words, build, world, tmp_path, capsys, monkeypatch):
    argv = [str(a) for a in build(tmp_path, world)]
    before, world_before = _snapshot(tmp_path), _snapshot(world)
    capsys.readouterr()
    try:
        rc = run_cli(argv, monkeypatch)
    except SystemExit as e:  # argparse refusals: status 2
        rc = e.code
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert rc not in (0, None), f"{argv}: exit {rc}"
    assert len(lines) == 1, f"{argv}: stderr has {len(lines)} lines:\n{cap.err}"
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    assert lines[0].startswith("flat") and ": error: " in lines[0], lines[0]
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert _snapshot(tmp_path) == before, f"{argv}: wrote {_snapshot(tmp_path) - before}"
    assert _snapshot(world) == world_before, f"{argv}: wrote {_snapshot(world) - world_before}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
@pytest.mark.parametrize("cmd", ["recon", "train"])
def test_device_cuda_without_cuda(cmd, world, tmp_path, capsys, monkeypatch):
    argv = (["recon", "-", world / "data", tmp_path / "out", *ZF, "--device", "cuda"] if cmd == "recon"
            else _train(tmp_path, world, "--device", "cuda"))
    assert run_cli(argv, monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda: CUDA is not available" in err[0], err
    assert not any(tmp_path.iterdir())


def test_zero_nonfinite_says_how_many(world, tmp_path, capsys, monkeypatch):
    bad = _bad_file("nan")(tmp_path / "in")
    k = _kspace(bad)
    k[0, 2, 1, 1] = np.inf  # two non-finite samples in all
    _edit(bad, kspace=k)
    good = make_fastmri_file(tmp_path / "ref" / "nan.h5", S=2)  # the same file, finite: zeros there
    k = _kspace(good)
    k[1, 0, 3, 3] = 0
    k[0, 2, 1, 1] = 0
    _edit(good, kspace=k)
    assert run_cli(["recon", "-", bad, tmp_path / "o", *ZF, "--zero-nonfinite"], monkeypatch) == 0
    assert "zeroed 2 non-finite k-space sample(s)" in capsys.readouterr().err
    assert run_cli(["recon", "-", good, tmp_path / "r", *ZF], monkeypatch) == 0
    with h5py.File(tmp_path / "o" / "nan.h5") as a, h5py.File(tmp_path / "r" / "nan.h5") as b:
        np.testing.assert_array_equal(a["reconstruction"][()], b["reconstruction"][()])
        assert np.isfinite(a["reconstruction"][()]).all()


def test_nan_in_training_data_names_file_and_slice(world, tmp_path):
    from flat.config import apply_overrides, get_preset
    from flat.data.fastmri import DataError
    from flat.train import train

    d = tmp_path / "train"
    make_tiny_fastmri(d, n_vols=2, slices=2, seed=0)
    k = _kspace(d / "vol01.h5")
    k[1, 0, 0, 0] = np.nan
    _edit(d / "vol01.h5", kspace=k)
    cfg = apply_overrides(get_preset("tiny"), ["train.threads=1", "train.epochs=1"])
    with pytest.raises(DataError, match=r"vol01\.h5: slice 1 of 'kspace' holds 1 non-finite"):
        train(cfg, d, world / "val", tmp_path / "run", progress=False, echo=False)


def test_eval_checks_json_before_computing(world, tmp_path, capsys, monkeypatch):
    """An unwritable --json is refused before any metric (no table printed)."""
    import flat.metrics

    called = []
    monkeypatch.setattr(flat.metrics, "evaluate_folders", lambda *a, **k: called.append(1))
    assert run_cli(["eval", world / "pred", world / "data", "--json", world / "afile" / "m.json"], monkeypatch) == 1
    cap = capsys.readouterr()
    assert not called and cap.out == ""


# ------------------------------------------------------------------ disk full, permission denied
@pytest.mark.parametrize("err,words", [(errno.ENOSPC, "disk full (no space left on device)"),
                                       (errno.EACCES, "permission denied")])
def test_write_errors_in_words(err, words, world, tmp_path, capsys, monkeypatch):
    """A failure while writing an output is said in words, naming the file; no temporary is left."""
    real = h5py.File

    def failing(name, mode="r", *a, **k):
        if mode == "w":
            raise OSError(err, os.strerror(err))
        return real(name, mode, *a, **k)

    monkeypatch.setattr(h5py, "File", failing)
    out = tmp_path / "out"
    assert run_cli(["recon", "-", world / "data", out, *ZF], monkeypatch) == 1
    # the failure comes mid-work, after the one "note: device …, backend …" line every recon prints
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ": note: device " not in ln]
    assert len(lines) == 1 and words in lines[0] and str(out / "a.h5") in lines[0], lines
    assert not [p for p in out.iterdir()]  # no temporary file left


def test_torch_short_write_is_disk_full(tmp_path, monkeypatch):
    """torch.save to a path reports ENOSPC as RuntimeError('... unexpected pos ...')."""
    import flat.io as fio

    monkeypatch.setattr(fio, "_looks_full", lambda folder: True)
    with pytest.raises(fio.WriteError, match=r"last\.pt: disk full"):
        with fio.atomic_path(tmp_path / "last.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(fio, "_looks_full", lambda folder: False)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # not full: the error as it was
        with fio.atomic_path(tmp_path / "last.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_refused_before_work(world, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert run_cli(["recon", "-", world / "data", ro / "out", *ZF], monkeypatch) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "permission denied" in err[0] and str(ro) in err[0], err
        assert run_cli(["eval", world / "pred", world / "data", "--json", ro / "m.json"], monkeypatch) == 1
        assert "permission denied" in capsys.readouterr().err
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o700)


def test_unwritable_out_refused_before_work_as_root(world, tmp_path, capsys, monkeypatch):
    """Where the tests run as root (who may write anywhere), the same check through os.access."""
    real = os.access
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == ro else real(p, mode, *a, **k))
    assert run_cli(["recon", "-", world / "data", ro / "out", *ZF], monkeypatch) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "permission denied" in err[0] and str(ro) in err[0], err
    assert not any(ro.iterdir())
