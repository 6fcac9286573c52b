"""The checkpoint format (flat.checkpoint): the keys are pinned, so a change to what is written
shows here, and resuming checks the run's identity but not its bookkeeping."""
import re

import pytest
import torch

from flat.checkpoint import read_checkpoint, read_train_state, save_model, save_train_state
from flat.config import apply_overrides, get_preset
from flat.model import FlatModel

MODEL_KEYS = ["kind", "version", "config", "model", "meta"]
STATE_KEYS = ["kind", "version", "config", "model", "optimizer", "epoch", "step_in_epoch", "global_step",
              "elapsed_s", "history", "rng"]


@pytest.fixture
def run(tmp_path):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = FlatModel(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return cfg, model, opt, tmp_path


def test_keys_and_round_trip(run):
    cfg, model, opt, tmp = run
    save_model(tmp / "model.pt", model, cfg, {"global_step": 3})
    save_train_state(tmp / "last.pt", cfg=cfg, model=model, optimizer=opt, epoch=1, step_in_epoch=2,
                     global_step=3, elapsed_s=4.5, history=[{"step": 3}])
    m, s = read_checkpoint(tmp / "model.pt"), read_checkpoint(tmp / "last.pt")
    assert list(m) == MODEL_KEYS and m["kind"] == "flat-model" and m["version"] == 1
    assert list(s) == STATE_KEYS and s["kind"] == "flat-train-state" and s["version"] == 1
    assert m["config"] == s["config"] == cfg.to_dict() and m["meta"] == {"global_step": 3}
    assert (s["epoch"], s["step_in_epoch"], s["global_step"], s["elapsed_s"]) == (1, 2, 3, 4.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in s["model"].items())
    assert not [p for p in tmp.iterdir() if p.name.endswith(".tmp")]


def test_resume_identity_ignores_bookkeeping_only(run):
    cfg, model, opt, tmp = run
    save_train_state(tmp / "last.pt", cfg=cfg, model=model, optimizer=opt, epoch=0, step_in_epoch=0,
                     global_step=0, elapsed_s=0.0, history=[])
    same_run = apply_overrides(cfg, ["train.threads=3", "train.log_every=7"])
    assert read_train_state(tmp / "last.pt", same_run)["global_step"] == 0
    other_run = apply_overrides(cfg, ["train.lr=0.123"])
    with pytest.raises(ValueError, match=re.escape(f"--out: {tmp} holds a run with a different config")):
        read_train_state(tmp / "last.pt", other_run)


def test_not_a_checkpoint(tmp_path):
    torch.save({"kind": "something-else"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a FLAT checkpoint"):
        read_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pt")
