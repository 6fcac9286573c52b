"""The training data pipeline (flat/data/slices.py, docs/training.md): DataLoader workers give the
very batches of the main process, in order, from any (epoch, step); sharding by rank; fastMRI's
sample_rate / volume_sample_rate; the worker default; time per step with and without workers."""
import time

import pytest
import torch

from flat.config import apply_overrides, get_preset
from flat.data.slices import EpochBatches, TrainSlices, collate, default_workers, make_loader
from tests.fastmri_files import make_tiny_fastmri


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    make_tiny_fastmri(root, n_vols=3, slices=2, seed=3)  # 3 volumes x 2 slices
    return root


def _data(train_dir, *sets):
    cfg = apply_overrides(get_preset("tiny"), list(sets))
    return TrainSlices(train_dir, cfg.data, seed=cfg.train.seed)


def _equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def _passes(loader, sampler, epochs, start=(0, 0)):
    out = []
    for e in range(start[0], epochs):
        sampler.start(e, start[1] if e == start[0] else 0)
        out += list(loader)
    return out


def test_workers_give_the_main_process_batches_in_order(train_dir):
    data = _data(train_dir)
    sampler = EpochBatches(len(data), 0, world=1, rank=0, batch_size=2)
    direct = [collate([data[(e, i)] for i in b]) for e in range(3) for b in sampler.batches(e)]
    for workers in (0, 2):
        got = _passes(make_loader(data, sampler, workers, pin_memory=False), sampler, 3)
        assert len(got) == len(direct) == 9
        for a, b in zip(direct, got):
            _equal(a, b)
    # masks and flips differ between epochs (they are seeded by the epoch)
    assert not torch.equal(direct[0]["masked_kspace"], direct[3]["masked_kspace"]) or \
        not torch.equal(direct[0]["mask"], direct[3]["mask"])
    # resumed at epoch 1, step 2 of 3: exactly the tail of the uninterrupted sequence
    tail = _passes(make_loader(data, sampler, 1, pin_memory=False), sampler, 3, start=(1, 2))
    assert len(tail) == 4
    for a, b in zip(direct[5:], tail):
        _equal(a, b)


def test_an_index_without_epoch_uses_set_epoch(train_dir):
    data = _data(train_dir)
    data.set_epoch(2)
    _equal(data[3], data[(2, 3)])


def test_ranks_share_an_epoch_without_overlap(train_dir):
    data = _data(train_dir)
    n = len(data)
    one = [i for b in EpochBatches(n, 0, 1, 0, 1).batches(4) for i in b]
    ranks = [[i for b in EpochBatches(n, 0, 2, r, 1).batches(4) for i in b] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == n // 2  # equal steps on every rank
    assert sorted(ranks[0] + ranks[1]) == sorted(one)
    assert not set(ranks[0]) & set(ranks[1])


def test_sample_rate_and_volume_sample_rate(train_dir):
    full = _data(train_dir)
    assert full.indices == list(range(6))
    half = _data(train_dir, "data.sample_rate=0.5")
    assert len(half) == 3 and half.indices == sorted(half.indices)
    assert _data(train_dir, "data.sample_rate=0.5").indices == half.indices  # seeded by train.seed
    other = [tuple(_data(train_dir, "data.sample_rate=0.5", f"train.seed={s}").indices) for s in range(8)]
    assert len(set(other)) > 1  # a random sample, not the first slices
    vols = _data(train_dir, "data.volume_sample_rate=0.67")  # round(3 * 0.67) = 2 whole volumes
    assert len(vols) == 4
    ranges = list(vols.raw.volume_slices().values())
    picked = [r for r in ranges if set(r) & set(vols.indices)]
    assert len(picked) == 2 and all(set(r) <= set(vols.indices) for r in picked)
    with pytest.raises(ValueError, match="not both"):
        apply_overrides(get_preset("tiny"), ["data.sample_rate=0.5", "data.volume_sample_rate=0.5"])
    with pytest.raises(ValueError, match="data.sample_rate"):
        apply_overrides(get_preset("tiny"), ["data.sample_rate=0"])
    with pytest.raises(ValueError, match="train.workers"):
        apply_overrides(get_preset("tiny"), ["train.workers=-3"])


def test_default_workers_from_the_cpus_this_process_may_use(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert default_workers(1) == 5 and default_workers(2) == 2 and default_workers(6) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert default_workers(1) == 8


def test_time_per_step_with_and_without_workers(train_dir, capsys):
    """Workers load the next batches while the step runs. On a shared 2-core machine the timing is
    reported, not asserted (it depends on the load); the batches must be the same either way."""
    from flat.model import FlatModel

    data = _data(train_dir)
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = FlatModel(cfg.model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen, per_step = {}, {}
        for workers in (0, 1):
            sampler = EpochBatches(len(data), 0, 1, 0, 1)
            loader = make_loader(data, sampler, workers, pin_memory=False)
            _passes(loader, sampler, 1)  # starts the persistent workers
            seen[workers], t0 = [], time.perf_counter()
            for b in _passes(loader, sampler, 3, start=(1, 0)):
                out = model(b["masked_kspace"], b["mask"], b["num_low_frequencies"])
                out.output.mean().backward()
                seen[workers].append(b)
            per_step[workers] = (time.perf_counter() - t0) / len(seen[workers])
            del loader
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(seen[0], seen[1]):
        _equal(a, b)
    with capsys.disabled():
        print(f"\n[data loader] time per step: no workers {per_step[0] * 1e3:.1f} ms, "
              f"1 worker {per_step[1] * 1e3:.1f} ms (tiny model, 1 thread; not asserted)")
