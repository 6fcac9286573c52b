"""Benchmark harness for ``pytest benchmarks/``: device-synchronised timing, memory, summary, JSON.

Timing
------
* CPU: pytest-benchmark ``pedantic`` (``time.perf_counter`` per call), warm-up rounds excluded,
  rounds sized to a time budget (``FLAT_BENCH_TIME`` seconds per case, default 0.5).
* GPU: CUDA events around every call (median reported), inputs rotated over enough sets that
  each call misses the 50 MB L2; pytest-benchmark also records the same calls with a timer that
  synchronises the device before reading the clock, so its table is device time too.
  Never the Triton interpreter: Triton on CPU tensors is skipped, not timed.
* Every case also reports the medians of the first and second half of its rounds ("time each
  variant twice", docs/kernels.md (testing)): a speedup smaller than that spread is noise.

Peak memory: ``torch.cuda.max_memory_allocated`` above the pre-call allocation on GPU; on CPU the
same quantity rebuilt from the profiler's allocator events (``profile_memory=True``), replayed in
time order. (Process RSS is no use after warm-up: freed pages stay resident in malloc's heap, so
its high-water mark barely moves; it is only the fallback when the profiler fails.)

Results: one row per case (op, mode, variant, shape, median, speedup vs the reference in the same
run, fraction of the roofline floor, peak memory) printed at the end and written as JSON to
``--flat-bench-json`` / ``FLAT_BENCH_JSON`` (default ``benchmarks/results/latest.json``).
"""
from __future__ import annotations

import datetime
import importlib.util
import itertools
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("flat") is None:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from flat_kernels.timing import copy_bandwidth, event_times  # noqa: E402

DEFAULT_JSON = HERE / "results" / "latest.json"
_ROWS: list[dict] = []
_REF: dict[tuple, float] = {}  # (op, mode, shape) -> reference median, same session


# ---------------------------------------------------------------- collection and options
def pytest_collect_file(file_path, parent):
    # bench_*.py files are collected by `pytest benchmarks/` without touching the repo's
    # pytest config (pyproject's testpaths keeps plain `pytest` on tests/ only).
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if not parent.session.isinitpath(file_path):  # explicit paths are collected already
            return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser):
    parser.addoption(
        "--flat-bench-json",
        default=os.environ.get("FLAT_BENCH_JSON", str(DEFAULT_JSON)),
        help="where to write the FLAT benchmark summary JSON (env FLAT_BENCH_JSON)",
    )


def pytest_configure(config):
    # One intra-op thread on the CPU by default: on a shared 2-core machine a second thread that
    # gets descheduled stalls every parallel region at its barrier (we measured 20-400x
    # inflation). FLAT_BENCH_THREADS=N to measure multi-threaded.
    if not torch.cuda.is_available() or os.environ.get("FLAT_BENCH_DEVICE") == "cpu":
        torch.set_num_threads(int(os.environ.get("FLAT_BENCH_THREADS", "1")))


# ---------------------------------------------------------------- device
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@pytest.fixture(scope="session")
def device() -> torch.device:
    from workloads import bench_device

    return bench_device()


@pytest.fixture(scope="session")
def device_info(device) -> dict:
    info = {
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            device=torch.cuda.get_device_name(device),
            l2_bytes=int(getattr(p, "L2_cache_size", 50 << 20)),
            memory_bytes=int(p.total_memory),
            cuda=torch.version.cuda,
        )
    else:
        info.update(
            device=f"{_cpu_name()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})",
            l2_bytes=0,  # CPU: inputs are not rotated; the CPU sizes fit in L3 (see RESULTS.md)
        )
    info["copy_bandwidth_Bps"] = copy_bandwidth(device)
    _SESSION_INFO.update(info)
    return info


_SESSION_INFO: dict = {}


# ---------------------------------------------------------------- memory
def _proc_status_kb(key: str) -> int | None:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else None


def _cpu_profiler_peak(fn) -> int:
    """Peak bytes of live torch CPU allocations during one call, above the pre-call level.

    The CPU allocator reports every allocation and free to the profiler; replaying them in time
    order gives the high-water mark (freed pages stay resident in malloc's heap, so RSS cannot).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _peak_memory(fn, device: torch.device) -> tuple[int | None, str]:
    """(bytes above the pre-call level at the peak of one call, method used)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base, "torch.cuda.max_memory_allocated"
    try:
        return _cpu_profiler_peak(fn), "torch.profiler allocator events (profile_memory=True), CPU analogue of max_memory_allocated"
    except Exception:  # profiler unavailable: fall back to the process RSS high-water mark
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _proc_status_kb("VmRSS")
        fn()
        peak = _proc_status_kb("VmHWM")
        return (peak - base) * 1024, "cpu VmHWM-VmRSS delta (clear_refs=5)"
    except OSError:
        import resource

        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        # Only grows past an earlier high-water mark: a lower bound, often 0.
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, "cpu ru_maxrss delta"


# ---------------------------------------------------------------- the per-case helper
def _cuda_synced_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


class Bench:
    """Handed to each benchmark: builds rotated input sets, times, records one row."""

    def __init__(self, benchmark, device, info):
        self.benchmark = benchmark
        self.device = device
        self.info = info
        self.is_cuda = device.type == "cuda"

    def n_sets(self, one_set_bytes: int) -> int:
        """Input sets to rotate through: > L2 in flight on GPU; 1 on CPU (nothing to rotate past)."""
        if not self.is_cuda:
            return 1
        from workloads import n_rotating_sets

        return n_rotating_sets(one_set_bytes, self.info["l2_bytes"])

    def skip(self, reason: str, **key) -> None:
        _ROWS.append({**key, "status": "skipped", "reason": reason})
        pytest.skip(reason)

    def run(self, calls, *, op, mode, variant, shape, floor_bytes=None, items_per_call=None,
            extra=None, budget_s=None):
        """Time ``calls`` (zero-arg callables, one per input set, used in rotation); record a row.

        ``items_per_call`` (e.g. slices) adds a throughput column; ``floor_bytes`` adds achieved
        bandwidth and the fraction of the roofline floor.
        """
        budget = budget_s or float(os.environ.get("FLAT_BENCH_TIME", "0.5"))
        cyc = itertools.cycle(calls)
        cpu_times: list[float] = []

        def step():
            # Process CPU time alongside the wall clock: on a shared CPU machine it is the
            # contention-robust figure (time spent descheduled is not counted).
            c0 = time.process_time()
            out = next(cyc)()
            cpu_times.append(time.process_time() - c0)
            return out

        # Warm-up (excluded): first-call allocations, plan caches, lazy backend imports.
        t0 = time.perf_counter()
        for _ in range(max(2, len(calls))):
            step()
        if self.is_cuda:
            torch.cuda.synchronize()
        per_call = (time.perf_counter() - t0) / max(2, len(calls))

        bm = self.benchmark
        if self.is_cuda:
            # Re-estimate after warm-up: the first calls above may include JIT compilation.
            per_call = statistics.median(event_times(step, max(3, len(calls))))
            reps = int(min(1000, max(20, budget / max(per_call, 1e-6))))
            times = event_times(step, reps)
            timer = "cuda events per call (median)"
            bm._timer = _cuda_synced_clock  # pytest-benchmark's own table: device-synchronised too
            iters = max(len(calls), int(min(100, 1e-3 / max(per_call, 1e-7))))
            bm.pedantic(step, rounds=max(3, min(20, int(budget / max(per_call * iters, 1e-6)))),
                        warmup_rounds=1, iterations=iters)
        else:
            rounds = int(min(300, max(7, budget / max(per_call, 1e-6))))
            bm.pedantic(step, rounds=rounds, warmup_rounds=2, iterations=1)
            times = list(bm.stats.stats.data) if bm.stats is not None else []
            timer = "time.perf_counter per call (pytest-benchmark pedantic, median)"
        cpu_times = cpu_times[-len(times):] if times else []
        if not times:  # --benchmark-disable: ran once, nothing measured
            self.skip("benchmarks disabled (--benchmark-disable)", op=op, mode=mode, variant=variant, shape=shape)

        med = statistics.median(times)
        half = len(times) // 2
        halves = [statistics.median(times[:half] or times), statistics.median(times[half:])]
        q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), med, max(times)]
        peak, peak_method = _peak_memory(step, self.device)

        row = {
            "op": op, "mode": mode, "variant": variant, "backend": variant, "shape": shape,
            "status": "ok", "median_s": med, "iqr_s": q[2] - q[0], "half_medians_s": halves,
            "spread": abs(halves[0] - halves[1]) / med, "rounds": len(times), "timer": timer,
            "n_input_sets": len(calls), "peak_mem_bytes": peak, "peak_mem_method": peak_method,
            "device": self.info["device"], "loadavg_1min": os.getloadavg()[0],
        }
        if not self.is_cuda and cpu_times:
            row["cpu_median_s"] = statistics.median(cpu_times)
        if floor_bytes:
            bw = floor_bytes / med
            row.update(floor_bytes=int(floor_bytes), achieved_GBps=bw / 1e9,
                       floor_fraction=bw / self.info["copy_bandwidth_Bps"])
        if items_per_call:
            row["items_per_s"] = items_per_call / med
        ref = _REF.get((op, mode, shape))
        if variant == "reference":
            _REF[(op, mode, shape)] = med
            row["speedup_vs_reference"] = 1.0
        elif ref is not None:
            row["speedup_vs_reference"] = ref / med
        ref_cpu = _REF.get((op, mode, shape, "cpu"))
        if variant == "reference" and "cpu_median_s" in row:
            _REF[(op, mode, shape, "cpu")] = row["cpu_median_s"]
        elif ref_cpu is not None and "cpu_median_s" in row:
            row["speedup_cpu_time"] = ref_cpu / row["cpu_median_s"]
        row.update(extra or {})
        bm.extra_info.update(row)  # the same dict object is kept for the late speedup fill-in
        row["_extra"] = bm.extra_info
        _ROWS.append(row)
        return row


@pytest.fixture
def bench(benchmark, device, device_info):
    return Bench(benchmark, device, device_info)


# ---------------------------------------------------------------- summary and JSON
def _fill_speedups() -> None:
    for r in _ROWS:
        if r.get("status") == "ok" and "speedup_vs_reference" not in r:
            ref = _REF.get((r["op"], r["mode"], r["shape"]))
            if ref is not None:
                r["speedup_vs_reference"] = ref / r["median_s"]
                r["_extra"]["speedup_vs_reference"] = r["speedup_vs_reference"]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    _fill_speedups()  # before pytest-benchmark writes its own JSON
    if _ROWS:
        path = Path(session.config.getoption("--flat-bench-json"))
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{k: v for k, v in r.items() if k != "_extra"} for r in _ROWS]
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"device": _SESSION_INFO, "rows": rows}, indent=1, default=str))
        tmp.replace(path)
        path.with_suffix(".md").write_text(_markdown(rows))
        session.config._flat_bench_json = str(path)
    yield


def _markdown(rows: list[dict]) -> str:
    """The summary as a Markdown table (pasted into RESULTS.md)."""
    i = _SESSION_INFO
    out = [f"Device: {i.get('device')}; torch {i.get('torch')}; {i.get('date_utc')}; "
           f"copy bandwidth {i.get('copy_bandwidth_Bps', 0) / 1e9:.1f} GB/s; "
           f"1-min load average at start {i.get('loadavg_start')}.", "",
           "| op | mode | variant | shape | median (wall) | halves ± | speedup | floor % / slices/s | peak MB | CPU time | speedup (CPU time) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            continue
        ff = r.get("floor_fraction")
        fl = f"{100 * ff:.1f}" if ff is not None else (f"{r['items_per_s']:.2f}/s" if "items_per_s" in r else "-")
        sp = r.get("speedup_vs_reference")
        spc = r.get("speedup_cpu_time", 1.0 if r["variant"] == "reference" else None)
        ct, pk = r.get("cpu_median_s"), r.get("peak_mem_bytes")
        out.append(
            f"| {r['op']} | {r['mode']} | {r['variant']} | {r['shape']} | {_fmt_time(r['median_s'])} | "
            f"{100 * r['spread']:.0f}% | "
            f"{f'{sp:.2f}x' if sp is not None else '-'} | {fl} | {f'{pk / 2**20:.1f}' if pk is not None else '-'} | "
            f"{_fmt_time(ct) if ct is not None else '-'} | {f'{spc:.2f}x' if spc is not None else '-'} |")
    skipped = sorted({r["reason"] for r in rows if r.get("status") != "ok"})
    out += [""] + [f"Skipped: {reason}" for reason in skipped]
    return "\n".join(out) + "\n"


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("FLAT benchmark summary")
    if _SESSION_INFO:
        tr.write_line(f"device: {_SESSION_INFO.get('device')}  torch {_SESSION_INFO.get('torch')}  "
                      f"copy bandwidth {_SESSION_INFO.get('copy_bandwidth_Bps', 0) / 1e9:.1f} GB/s  "
                      f"{_SESSION_INFO.get('date_utc')}  load avg {_SESSION_INFO.get('loadavg_start')} -> "
                      f"{os.getloadavg()[0]:.1f}")
        tr.write_line("median = wall-clock median per call; speedup = reference median / variant median (same run); "
                      "halves± = |median of 1st half − 2nd half of the rounds| / median (a smaller speedup is noise); "
                      "floor% = achieved floor bandwidth / measured copy bandwidth (model rows: slices/s); cpu-time = process CPU time per call")
    hdr = (f"{'op':<22}{'mode':<14}{'variant':<11}{'shape':<18}{'median':>12}{'halves±':>8}{'speedup':>9}{'floor%':>10}"
           f"{'peak MB':>9}{'cpu-time':>12}{'speedup':>9}")
    tr.write_line(hdr)
    tr.write_line("-" * len(hdr))
    skipped: dict[str, list[str]] = {}
    for r in _ROWS:
        if r.get("status") != "ok":
            skipped.setdefault(r["reason"], []).append(f"{r.get('op')}/{r.get('variant')}")
            continue
        sp = r.get("speedup_vs_reference")
        ff = r.get("floor_fraction")
        pk = r.get("peak_mem_bytes")
        fl = f"{100 * ff:.1f}" if ff is not None else (f"{r['items_per_s']:.2f}/s" if "items_per_s" in r else "-")
        sprd = f"{100 * r['spread']:.0f}%"
        ct, spc = r.get("cpu_median_s"), r.get("speedup_cpu_time", 1.0 if r["variant"] == "reference" else None)
        tr.write_line(
            f"{r['op']:<22}{r['mode']:<14}{r['variant']:<11}{r['shape']:<18}{_fmt_time(r['median_s']):>12}{sprd:>8}"
            f"{(f'{sp:.2f}x' if sp is not None else '-'):>9}{fl:>10}"
            f"{(f'{pk / 2**20:.1f}' if pk is not None else '-'):>9}"
            f"{(_fmt_time(ct) if ct is not None else '-'):>12}{(f'{spc:.2f}x' if spc is not None else '-'):>9}"
        )
    for reason, cases in skipped.items():
        uniq = sorted(set(cases))
        tr.write_line(f"skipped {len(cases)} case(s) [{', '.join(uniq[:6])}{' ...' if len(uniq) > 6 else ''}]: {reason}")
    path = getattr(tr.config, "_flat_bench_json", None)
    if path:
        tr.write_line(f"summary JSON: {path}")
