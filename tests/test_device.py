"""``--device`` on the commands (docs/gpu.md): a device that is not there, or a backend that cannot
run on the device, is one clear line and a non-zero exit before any work; the chosen device and
backend are printed once. (On a GPU the same commands run there: scripts/gpu_check.sh.)"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _flat(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("FLAT_BACKEND", "FLAT_DEBUG")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "flat", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_demo_refuses_a_missing_device_before_any_work(tmp_path, device):
    out = tmp_path / "demo"
    r = _flat("demo", "--out", str(out), "--device", device, "--steps", "1")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "CUDA is not available" in r.stderr, r.stderr
    assert not out.exists()


def test_demo_refuses_a_backend_that_cannot_run_there(tmp_path):
    out = tmp_path / "demo"
    r = _flat("demo", "--out", str(out), "--device", "cpu", "--backend", "cupy", "--steps", "1")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "cupy" in r.stderr, r.stderr
    assert not out.exists()


def test_demo_device_flag_bad_name(tmp_path):
    r = _flat("demo", "--out", str(tmp_path / "d"), "--device", "gpu0")
    assert r.returncode != 0 and "--device" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- flat recon
def _one_line(capsys, *needles):
    err = [e for e in capsys.readouterr().err.strip().splitlines() if not e.startswith("flat recon: note")]
    assert len(err) == 1 and err[0].startswith("flat recon: error:"), err
    for n in needles:
        assert n in err[0], err[0]


@pytest.mark.parametrize("args,needles", [
    pytest.param(["--device", "cuda"], ["--device cuda", "CUDA is not available"], id="no-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
    (["--device", "cpu", "--backend", "cupy"], ["--backend cupy"]),
    (["--cuda-graphs"], ["--cuda-graphs", "--device cuda"]),
    (["--compile"], ["--compile", "--method flat"]),
])
def test_recon_refuses_clearly_before_any_output(tmp_path, capsys, monkeypatch, args, needles):
    from tests.fastmri_files import make_fastmri_file, run_cli

    data = make_fastmri_file(tmp_path / "data" / "v.h5", S=2)
    out = tmp_path / "out"
    method = [] if "--cuda-graphs" in args else ["--method", "zero-filled"]
    ck = tmp_path / "m.pt" if not method else "-"
    if not method:
        pathlib.Path(ck).write_bytes(b"x")
    assert run_cli(["recon", ck, data, out, *method, *args, "--no-progress"], monkeypatch) == 1
    _one_line(capsys, *needles)
    assert not out.exists()


def test_recon_prints_device_and_backend_once(tmp_path, capsys, monkeypatch):
    from tests.fastmri_files import make_fastmri_file, run_cli

    data = make_fastmri_file(tmp_path / "data" / "v.h5", S=3)
    assert run_cli(["recon", "-", data, tmp_path / "out", "--method", "zero-filled", "--batch-size", "2",
                    "--backend", "reference", "--no-progress"], monkeypatch) == 0
    err = capsys.readouterr().err
    assert err.count("flat recon: note: device cpu, backend reference\n") == 1, err


@pytest.mark.parametrize("flag,mode", [("--compile", "compile"), ("--cuda-graphs", "graphs")])
def test_recon_flat_loads_on_the_device_and_uses_the_fast_forward(tmp_path, monkeypatch, flag, mode):
    """--method flat: the checkpoint is loaded on --device, and --compile / --cuda-graphs hand a
    flat.capture.make_forward forward to flat.inference.reconstruct (inference faked here)."""
    import types

    import flat.capture as capture
    import flat.recon as fr
    from tests.fastmri_files import make_fastmri_file, run_cli

    calls = {}
    fake = types.ModuleType("flat.inference")
    fake.load_model = lambda path, map_location=None: calls.setdefault("load", map_location) and "MODEL"

    def reconstruct(model, k, mask, nlf, *, backend=None, forward=None):
        calls["forward"] = forward
        return fr.zero_filled(k)

    fake.reconstruct = reconstruct
    monkeypatch.setitem(sys.modules, "flat.inference", fake)
    monkeypatch.setattr(capture, "make_forward", lambda model, m, backend=None: calls.setdefault("mode", m) and "FWD")
    if mode == "graphs":  # pretend to be a CUDA machine for the device checks (nothing runs on it)
        monkeypatch.setattr(fr, "check_device", lambda d: torch.device("cuda:0"))
        monkeypatch.setattr(fr, "resolve", lambda b, t: "reference")
    ck = tmp_path / "m.pt"
    ck.write_bytes(b"x")
    data = make_fastmri_file(tmp_path / "data" / "v.h5", S=2)
    dev = "cuda:0" if mode == "graphs" else "cpu"
    assert run_cli(["recon", ck, data, tmp_path / "out", "--device", dev, flag, "--backend", "reference",
                    "--no-progress"], monkeypatch) == 0
    assert calls == {"load": dev, "mode": mode, "forward": "FWD"}
