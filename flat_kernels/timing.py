"""One timing harness for everything that times kernels: ``pytest benchmarks/``, the Triton bench
(``python -m flat_kernels.triton.bench``) and the GPU check (``scripts/gpu_check.sh``).

GPU time comes from CUDA events around each call (the caller warms up) or, where Triton is
installed, ``triton.testing.do_bench`` (median; warm-up and repeat in milliseconds); the copy
bandwidth, the yardstick of every floor, is the best of several large copies (the least disturbed
one: attainable bandwidth). How the benchmarks time and why: docs/kernels.md (testing).
"""
from __future__ import annotations

import time

import torch


def event_times(fn, reps: int) -> list[float]:
    """Per-call device seconds of ``fn()`` from CUDA events, ``reps`` calls (warm up first)."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize()
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]


def gpu_timer(*, warmup_ms: int = 50, rep_ms: int = 300, quick: bool = False):
    """A function ``fn -> median milliseconds`` on the GPU: do_bench where Triton is installed,
    else CUDA events. ``quick``: one warm-up call and one timed call (smoke runs, any device)."""
    if quick:
        def once(fn):
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return (time.perf_counter() - t) * 1e3
        return once
    try:
        from triton.testing import do_bench
    except ImportError:
        def events(fn, reps=20):
            fn()
            times = sorted(event_times(fn, reps))
            return times[len(times) // 2] * 1e3
        return events
    return lambda fn: float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def copy_bandwidth(device, *, nbytes: int | None = None, repeats: int = 7) -> float:
    """Attainable copy bandwidth of ``device`` in bytes/s (read + write counted): the best of
    ``repeats`` copies of ``nbytes`` (default 512 MiB on a GPU, far beyond L2; 128 MiB on a CPU)."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (512 << 20) if device.type == "cuda" else (128 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if device.type == "cuda":
        times = event_times(lambda: dst.copy_(src), repeats)
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / min(times)
