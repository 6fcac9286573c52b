"""Training: one-batch overfit, exact resume after a kill, DDP on 2 CPU processes, the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flat.config import apply_overrides, get_preset
from flat.inference import load_model, read_checkpoint
from flat.train import MODEL_FILE, STATE_FILE, train
from tests.fastmri_files import make_tiny_splits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_splits(tmp_path_factory.mktemp("tinydata"), seed=0)


def _cfg(*overrides):
    return apply_overrides(get_preset("tiny"), ["train.threads=1", *overrides])


def test_one_batch_overfit(tiny_data, tmp_path):
    """A single slice, seen over and over, must be fitted far better than at the start."""
    cfg = _cfg("data.max_slices=1", "data.augment=false", "train.epochs=60", "train.lr=3e-3",
               "train.val_every=1000", "train.checkpoint_every=1000", "train.log_every=1000")
    from flat.model import FlatModel
    from flat.train import TrainSlices, collate
    from flat.flow.loss import flat_loss

    def loss_of(model):
        data = TrainSlices(tiny_data / "train", cfg.data, cfg.train.seed)
        data.set_epoch(0)
        b = collate([data[0]])
        with torch.no_grad():
            o = model(b["masked_kspace"], b["mask"], b["num_low_frequencies"])
            loss, _ = flat_loss(o.images, o.times, o.scale, b["target"], b["max_value"],
                                model.target_image(b["kspace"], o), velocity_weight=1.0)
        return loss.item()

    torch.manual_seed(cfg.train.seed)
    before = loss_of(FlatModel(cfg.model))
    r = train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "run", progress=False, echo=False)
    after = loss_of(r["model"])
    assert r["global_step"] == 60
    assert after < 0.5 * before, f"loss {before:.4f} -> {after:.4f}"


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    cfg = _cfg("train.epochs=2", "train.checkpoint_every=2")  # 4 steps/epoch, checkpoints at 2, 4, 6
    a = train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "a", progress=False, echo=False)
    # kill after 3 steps (the step-3 update is lost), resume; kill again mid second epoch, resume
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "b", progress=False, echo=False,
              _stop_after_steps=3)
    assert read_checkpoint(tmp_path / "b" / STATE_FILE)["global_step"] == 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "b", progress=False, echo=False,
              _stop_after_steps=3)
    assert read_checkpoint(tmp_path / "b" / STATE_FILE)["global_step"] == 4
    b = train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "b", progress=False, echo=False)
    assert a["global_step"] == b["global_step"] == 8
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"parameter {k} differs after resume"
    oa = read_checkpoint(tmp_path / "a" / STATE_FILE)["optimizer"]["state"]
    ob = read_checkpoint(tmp_path / "b" / STATE_FILE)["optimizer"]["state"]
    for i in oa:
        assert torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"])
    # validation of the final model is identical too
    assert a["history"][-1]["PSNR"] == b["history"][-1]["PSNR"]
    # a finished run resumed again does nothing more
    c = train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "b", progress=False, echo=False)
    assert c["global_step"] == 8
    # a different config in the same --out is refused
    with pytest.raises(ValueError, match="different config"):
        train(_cfg("train.lr=0.5"), tiny_data / "train", tiny_data / "val", tmp_path / "b",
              progress=False, echo=False)


def test_checkpoint_contents_are_safe_and_complete(tiny_data, tmp_path):
    cfg = _cfg("train.epochs=1", "model.mode=vanilla")
    train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "r", progress=False, echo=False)
    ck = torch.load(tmp_path / "r" / MODEL_FILE, weights_only=True)  # plain data only
    assert ck["kind"] == "flat-model" and ck["config"] == cfg.to_dict()
    model = load_model(tmp_path / "r" / MODEL_FILE)
    assert model.cfg.mode == "vanilla"
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines[-1]["psnr_per_cascade"]) == cfg.model.cascades + 1
    assert all(np.isfinite([lines[-1][k] for k in ("PSNR", "SSIM", "NMSE")]))
    assert (tmp_path / "r" / "train.log").read_text().count("val epoch") >= 1
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FLAT_BACKEND", None)
    return env


def test_cli_train(tiny_data, tmp_path):
    cfgfile = tmp_path / "cfg.json"
    cfgfile.write_text(json.dumps({"model": {"cascades": 2}, "train": {"epochs": 1}}))
    cmd = [sys.executable, "-m", "flat", "train", "--train", str(tiny_data / "train"), "--val",
           str(tiny_data / "val"), "--out", str(tmp_path / "cli"), "--preset", "tiny", "--config",
           str(cfgfile), "--set", "model.chans=3", "--set", "train.threads=1", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    model = load_model(tmp_path / "cli" / MODEL_FILE)
    assert model.cfg.cascades == 2 and model.cfg.chans == 3


def test_cli_errors_are_one_line(tiny_data, tmp_path, capsys):
    from flat.cli import main

    args = ["train", "--train", str(tiny_data / "train"), "--val", str(tiny_data / "val"),
            "--out", str(tmp_path / "o"), "--preset", "tiny"]
    for extra, word in ((["--set", "model.sigma=-1"], "model.sigma"), (["--set", "model.nope=1"], "model.nope"),
                        (["--set", "cascades=3"], "section.key=value"), (["--preset", "huge"], "preset"),
                        (["--config", str(tmp_path / "none.json")], "--config")):
        assert main(args + extra) == 1
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and word in err, err
    assert main(["train", "--train", str(tmp_path / "nowhere"), "--val", str(tiny_data / "val"),
                 "--out", str(tmp_path / "o2"), "--preset", "tiny"]) == 1
    assert "nowhere" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    """torchrun --nproc_per_node 2 -m flat train: gloo on the CPU, both ranks end with equal weights."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "flat", "train",
           "--train", str(tiny_data / "train"), "--val", str(tiny_data / "val"), "--out", str(tmp_path / "ddp"),
           "--preset", "tiny", "--set", "train.epochs=2", "--set", "train.threads=1", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert "2 process(es)" in log and "all 2 ranks agree" in log
    ck = read_checkpoint(tmp_path / "ddp" / STATE_FILE)
    assert ck["global_step"] == 4  # 4 slices / (2 ranks x batch 1) = 2 steps per epoch, 2 epochs
    load_model(tmp_path / "ddp" / MODEL_FILE)


def test_lr_schedule_is_a_pure_function():
    from flat.train import lr_factor

    tc = get_preset("tiny").train
    tc = type(tc)(**{**tc.__dict__, "warmup_steps": 4, "lr_schedule": "cosine"})
    f = [lr_factor(tc, s, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.25) and f[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[-1] < 0.05
    # with a wall-clock cap the decay follows the clock when it is further along than the steps
    capped = type(tc)(**{**tc.__dict__, "time_limit_s": 10.0})
    assert lr_factor(capped, 10, 100, elapsed_s=10.0) == pytest.approx(0.02)
    assert lr_factor(capped, 10, 100, elapsed_s=0.0) == lr_factor(tc, 10, 100)


def test_resume_with_workers_equals_uninterrupted(tiny_data, tmp_path):
    """DataLoader workers (train.workers=1) and a kill mid-epoch: the same weights as an
    uninterrupted run without workers (the batches are a function of (seed, epoch, step))."""
    cfg = _cfg("train.epochs=2", "train.checkpoint_every=1", "train.workers=0")
    a = train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "a", progress=False, echo=False)
    wcfg = apply_overrides(cfg, ["train.workers=1"])
    with pytest.raises(KeyboardInterrupt):
        train(wcfg, tiny_data / "train", tiny_data / "val", tmp_path / "b", progress=False, echo=False,
              _stop_after_steps=3)  # mid first epoch's 4 steps, checkpointed at step 2 (3 is lost)
    assert read_checkpoint(tmp_path / "b" / STATE_FILE)["global_step"] == 2
    # train.workers is bookkeeping: a resumed run may use another number of workers
    b = train(wcfg, tiny_data / "train", tiny_data / "val", tmp_path / "b", progress=False, echo=False)
    assert "1 data worker(s)" in (tmp_path / "b" / "train.log").read_text()
    assert a["global_step"] == b["global_step"] == 8
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"parameter {k} differs after resume with workers"
    # best.pt beside model.pt: the weights of the best validation SSIM so far
    best = read_checkpoint(tmp_path / "b" / "best.pt")
    ssim = [h["SSIM"] for h in b["history"]]
    assert best["meta"]["SSIM"] == max(ssim) and best["meta"]["global_step"] == b["history"][ssim.index(max(ssim))]["step"]
    load_model(tmp_path / "b" / "best.pt")


def test_tensorboard_needs_the_package(tiny_data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed: the missing-package error cannot be checked here")
    with pytest.raises(ValueError, match="--tensorboard: the tensorboard package is not installed"):
        train(_cfg("train.epochs=1"), tiny_data / "train", tiny_data / "val", tmp_path / "tb", progress=False,
              echo=False, tensorboard=tmp_path / "events")


_VALIDATE_SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
from flat.config import get_preset
from flat.model import FlatModel
from flat.validation import validate
dist.init_process_group("gloo")
torch.set_num_threads(1)
torch.manual_seed(0)
model = FlatModel(get_preset("tiny").model)
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.05 * torch.randn_like(p))
res = validate(model, sys.argv[1], get_preset("tiny").data, rank=dist.get_rank(), world=dist.get_world_size())
res["slices_here"] = None
with open(sys.argv[2] + f".{dist.get_rank()}", "w") as f:
    json.dump(res, f)
dist.destroy_process_group()
"""


def test_distributed_validation_equals_single_process(tmp_path):
    """2 CPU processes (gloo) each validate whole volumes; the gathered result is the one-process one."""
    from tests.fastmri_files import make_tiny_fastmri

    from flat.config import get_preset as preset
    from flat.model import FlatModel
    from flat.validation import rank_volumes, validate

    val = tmp_path / "val"
    make_tiny_fastmri(val, n_vols=3, slices=2, seed=5, prefix="val")
    script = tmp_path / "val_ddp.py"
    script.write_text(_VALIDATE_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script), str(val), str(tmp_path / "res")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = FlatModel(preset("tiny").model)
        with torch.no_grad():
            for q in model.parameters():
                q.add_(0.05 * torch.randn_like(q))
        one = validate(model, val, preset("tiny").data)
    finally:
        torch.set_num_threads(threads)
    for r in range(2):
        got = json.loads((tmp_path / f"res.{r}").read_text())
        got.pop("slices_here")
        assert got == json.loads(json.dumps(one)), f"rank {r}"
    assert one["volumes"] == 3
    # whole volumes per rank, contiguous runs as fastMRI's VolumeSampler, every volume once
    names = ["a", "b", "c", "d", "e"]
    parts = [rank_volumes(names, r, 2) for r in range(2)]
    assert parts == [["a", "b", "c"], ["d", "e"]] and rank_volumes(names, 0, 1) == names


def test_espirit_maps_come_from_the_data_pipeline_once_per_slice(tiny_data, tmp_path, monkeypatch):
    """model.sens=espirit: ESPIRiT runs once per (slice, centre width) in the data pipeline and
    validation, never inside the model's forward; the model gets exactly the cached maps."""
    import flat.coils
    from flat.model.flat import FlatModel

    calls, seen = [], []
    real = flat.coils.estimate_maps
    monkeypatch.setattr(flat.coils, "estimate_maps", lambda k, nl, *a, **kw: calls.append(k.shape[0]) or real(k, nl, *a, **kw))
    forward = FlatModel.forward
    monkeypatch.setattr(FlatModel, "forward", lambda self, *a, sens=None, **kw: seen.append(sens is not None)
                        or forward(self, *a, sens=sens, **kw))
    cfg = _cfg("model.sens=espirit", "train.epochs=3", "train.workers=0")
    train(cfg, tiny_data / "train", tiny_data / "val", tmp_path / "run", progress=False, echo=False)
    slices = lambda d: sum(1 for f in sorted((tiny_data / d).glob("*.h5")) for _ in range(_num_slices(f)))
    assert seen and all(seen)  # every forward, training and validation, got maps
    # one ESPIRiT per training slice (cached over the 3 epochs) plus one per validation slice
    # (cached over the validations): the tiny preset has one centre fraction, so one width
    assert sum(calls) == slices("train") + slices("val")


def _num_slices(path):
    import h5py

    with h5py.File(path, "r") as f:
        return f["kspace"].shape[0]
