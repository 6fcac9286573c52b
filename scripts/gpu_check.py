"""The Python stages of scripts/gpu_check.sh (docs/gpu.md): env, sanitize, micro, model, summary.

    python3 scripts/gpu_check.py env
    python3 scripts/gpu_check.py sanitize                      # under compute-sanitizer memcheck
    python3 scripts/gpu_check.py micro --out micro.json [--deadline S]
    python3 scripts/gpu_check.py model --out model.json [--deadline S]
    python3 scripts/gpu_check.py summary --dir OUT              # Markdown table, also OUT/summary.md

Runs from the source tree (the repository root on sys.path), with the machine's own packages.
micro and model stop starting new cases ``--deadline`` seconds after they start (the shell's
``timeout`` is the hard bound) and rewrite their JSON after every case, so a stage cut short
still leaves what it measured. Every case is guarded: one failure is recorded, the rest run.
Each variant's output is checked against a complex128 reference before it is timed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# knee 15×640×368 and brain 20×640×320 (fastMRI multicoil), B = 1 and 8; 2-D mask knee case
MICRO_SIZES = (("knee", 1, 15, 640, 368, "col"), ("knee", 8, 15, 640, 368, "col"),
               ("brain20", 1, 20, 640, 320, "col"), ("knee-2d", 1, 15, 640, 368, "2d"))
L2_BYTES = 60 << 20  # H200/H100 L2 is 50-60 MB: rotate input sets past it


# ---------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _write_json(path: Path, obj) -> None:
    """Whole file or nothing: write a sibling, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _rel(a, b) -> float:
    import torch

    a, b = a.detach().to(torch.complex128), b.detach().to(torch.complex128)
    return float((a - b).abs().norm() / b.abs().norm().clamp_min(1e-300))


def _available_backends():
    import flat.ops as fo
    from flat.ops.backends import unavailable_reason

    out, why = [], {}
    for be in ("reference", "triton", "cupy"):
        r = unavailable_reason(be, "cuda")
        (out.append(be) if r is None else why.__setitem__(be, r))
    del fo
    return out, why


def _inputs(B, C, H, W, kind, seed, dtype=None):
    """One input set on the GPU (seeded): fastMRI-like 4× column mask with 8 % ACS, or a 2-D mask."""
    import torch

    dtype = dtype or torch.complex64
    g = torch.Generator(device="cuda").manual_seed(seed)

    def c(*s):
        return torch.randn(*s, dtype=dtype, device="cuda", generator=g)

    S = c(B, C, H, W)
    S = S / S.abs().pow(2).sum(1, keepdim=True).sqrt()
    if kind == "col":
        M = (torch.rand(1, 1, 1, W, device="cuda", generator=g) < 0.17).float()
        M[..., W // 2 - W // 25: W // 2 + W // 25] = 1
    else:
        M = (torch.rand(1, 1, H, W, device="cuda", generator=g) < 0.25).float()
    return dict(x=c(B, H, W), v=c(B, H, W), ahy=c(B, H, W), S=S, M=M, g=c(B, H, W),
                dt=torch.full((B,), 1.0 / 12, device="cuda"), lam=torch.full((), 12.0, device="cuda"))


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + (seconds if seconds else 1e9)

    def left(self) -> float:
        return self.end - time.monotonic()


# ---------------------------------------------------------------- env
def cmd_env(args) -> int:
    import torch

    print("date:", _now())
    print("python:", sys.version.split()[0], platform.platform())
    print("torch:", torch.__version__, "CUDA", torch.version.cuda)
    if not torch.cuda.is_available():
        print("FAIL: torch sees no CUDA device")
        return 3
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
    for mod in ("triton", "cupy", "numpy", "pytest", "xdist", "pytest_timeout", "h5py", "skimage"):
        try:
            m = __import__(mod)
            print(f"{mod}: {getattr(m, '__version__', 'present')}")
        except Exception as exc:  # noqa: BLE001
            print(f"{mod}: not importable ({type(exc).__name__}: {str(exc)[:120]})")
    print("TRITON_INTERPRET:", os.environ.get("TRITON_INTERPRET", "(unset)"))
    try:
        ok, why = _available_backends()
    except Exception:  # noqa: BLE001
        print("FAIL: flat.ops does not import:\n" + traceback.format_exc())
        return 4
    print("backends on cuda:", ", ".join(ok))
    for be, r in why.items():
        print(f"  {be}: unavailable: {r}")
    import flat.ops as fo

    x = torch.randn(1, 16, 12, dtype=torch.complex64, device="cuda")
    S = torch.randn(1, 3, 16, 12, dtype=torch.complex64, device="cuda")
    m = torch.ones(12, device="cuda")
    want = fo.normal(x.to(torch.complex128), S.to(torch.complex128), m.double(), backend="reference")
    bad = 0
    for be in ok:
        err = _rel(fo.normal(x, S, m, backend=be), want)
        print(f"smoke normal {be}: rel err vs complex128 {err:.2e}")
        bad += not err < 1e-5
    return 5 if bad else 0


# ---------------------------------------------------------------- sanitize
def cmd_sanitize(args) -> int:
    """Tiny odd shapes through every GPU backend, column and 2-D masks, forward and backward."""
    import torch

    import flat.ops as fo

    ok, why = _available_backends()
    gpu = [b for b in ok if b != "reference"]
    if not gpu:
        print("no GPU backend to check:", why)
        return 1
    g = torch.Generator(device="cuda").manual_seed(0)
    for (B, C, H, W) in ((2, 3, 5, 367), (1, 20, 7, 17), (1, 2, 3, 6)):
        def c(*s):
            return torch.randn(*s, dtype=torch.complex64, device="cuda", generator=g)
        x, v, y, S = c(B, H, W), c(B, H, W), c(B, C, H, W), c(B, C, H, W)
        col = (torch.rand(B, W, device="cuda", generator=g) < 0.3).float()
        col[:, W // 2] = 1
        two_d = (torch.rand(B, 1, H, W, device="cuda", generator=g) < 0.3).float()
        for be in gpu:
            for mask in (col, two_d):
                xg, Sg = x.clone().requires_grad_(True), S.clone().requires_grad_(True)
                dt = torch.full((B,), 0.1, device="cuda", requires_grad=True)
                out = fo.flow_step(xg, v, y, Sg, mask, dt, 2.0, backend=be)
                out.abs().sum().backward()
                k = fo.kspace_flow_step(y, x, y, S, mask, 0.1, 2.0, backend=be)
                torch.cuda.synchronize()
                print(f"ran {be} B={B} C={C} H={H} W={W} mask={tuple(mask.shape)} "
                      f"finite={bool(torch.isfinite(out).all() and torch.isfinite(k).all())}")
    print("memcheck workload done")
    return 0


# ---------------------------------------------------------------- micro
def cmd_micro(args) -> int:
    import torch

    import flat.ops as fo

    dl = Deadline(args.deadline)
    from flat_kernels.timing import copy_bandwidth, gpu_timer

    timer = gpu_timer(warmup_ms=10, rep_ms=40)
    ok, why = _available_backends()
    res = {"date": _now(), "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "unavailable": why, "rows": []}
    res["copy_Bps"] = copy_bandwidth("cuda")
    out = Path(args.out)
    _write_json(out, res)
    variants = [("reference", None)]
    if "triton" in ok:
        import flat_kernels.triton as ft

        variants += [("triton", p) for p in ft.PRECISIONS]  # tf32x3 (default), ieee, tf32 (opt-in)
    if "cupy" in ok:
        variants.append(("cupy", None))
    failed = 0
    for name, B, C, H, W, kind in MICRO_SIZES:
        set_bytes = (B * C * H * W + 5 * B * H * W) * 8
        n_sets = max(1, min(4, math.ceil(3 * L2_BYTES / set_bytes)))
        sets = [_inputs(B, C, H, W, kind, s) for s in range(n_sets)]
        d128 = {k: (v.to(torch.complex128) if v.is_complex() else v.double()) for k, v in sets[0].items()}
        want = fo.flow_step(d128["x"], d128["v"], None, d128["S"], d128["M"], d128["dt"], d128["lam"],
                            ahy=d128["ahy"], backend="reference")
        counted = (B * C * H * W + 4 * B * H * W) * 8  # read S, x, v, Aᴴy; write x' (the floor)
        for be, prec in variants:
            row = dict(size=name, B=B, C=C, H=H, W=W, mask=kind, backend=be, precision=prec)
            # a Triton precision the tests stage did not compile needs its JIT time (predicted)
            need = 15 if (be == "triton" and prec != "tf32x3") else 4
            if dl.left() < need:
                row["error"] = "not run: stage time budget spent"
                res["rows"].append(row)
                continue
            try:
                if prec:
                    ft.set_precision(prec)
                it = iter(range(1 << 30))

                def fwd():
                    d = sets[next(it) % n_sets]
                    return fo.flow_step(d["x"], d["v"], None, d["S"], d["M"], d["dt"], d["lam"], ahy=d["ahy"],
                                        backend=be)

                def fwd_bwd():
                    d = sets[next(it) % n_sets]
                    xg, Sg = d["x"].detach().requires_grad_(True), d["S"].detach().requires_grad_(True)
                    o = fo.flow_step(xg, d["v"], None, Sg, d["M"], d["dt"], d["lam"], ahy=d["ahy"], backend=be)
                    return torch.autograd.grad(o, (xg, Sg), d["g"])

                t0 = time.monotonic()
                d = sets[0]
                got = fo.flow_step(d["x"], d["v"], None, d["S"], d["M"], d["dt"], d["lam"], ahy=d["ahy"], backend=be)
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.monotonic() - t0, 2)
                row["rel_err_c128"] = _rel(got, want)
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                row["fwd_us"] = [round(timer(fwd) * 1e3, 1), round(timer(fwd) * 1e3, 1)]  # timed twice
                row["fwd_peak_MB"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
                row["fwdbwd_us"] = round(timer(fwd_bwd) * 1e3, 1)
                best = min(row["fwd_us"]) * 1e-6
                row["fwd_GBps"] = round(counted / best / 1e9, 1)
                row["fwd_copy_frac"] = round(counted / best / res["copy_Bps"], 3)
                row["floor_us"] = round(counted / res["copy_Bps"] * 1e6, 1)
            except Exception as exc:  # noqa: BLE001
                failed += 1
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                traceback.print_exc()
            finally:
                if prec:
                    ft.set_precision("tf32x3")
            res["rows"].append(row)
            _write_json(out, res)
            print("micro", json.dumps(row), flush=True)
        sets.clear()
        del d128, want
        torch.cuda.empty_cache()
    _write_json(out, res)
    return 1 if failed else 0


# ---------------------------------------------------------------- model
def _model_workload(B, C, H, W):
    """Undersampled knee-like k-space with one column mask for the volume (bench_model.py's recipe)."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, H, W, dtype=torch.complex64, generator=g)
    S = torch.randn(B, C, H, W, dtype=torch.complex64, generator=g)
    S = S / S.abs().pow(2).sum(1, keepdim=True).sqrt()
    d = (-2, -1)
    full = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(S * x[:, None], dim=d), norm="ortho"), dim=d)
    mask = torch.rand(W, generator=g) < 0.17
    nlf = max(1, round(W * 0.08))
    mask[(W - nlf + 1) // 2: (W - nlf + 1) // 2 + nlf] = True
    target = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(full, dim=d), norm="ortho"), dim=d)
    target = target.abs().square().sum(1).sqrt()
    return dict(masked=full * mask, full=full, mask=mask, nlf=nlf, target=target,
                max_value=target.reshape(B, -1).amax(1))


def cmd_model(args) -> int:
    import torch

    from flat.config import ModelConfig
    from flat.flow.loss import flat_loss
    from flat.model import FlatModel

    dl = Deadline(args.deadline)
    ok, why = _available_backends()
    K, slices, (C, H, W) = 12, 8, (15, 640, 368)
    res = {"date": _now(), "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "model": f"FLAT K={K}, U-Net chans 18 pools 4, ACS maps", "data": f"knee {slices} slices x{C}x{H}x{W}",
           "unavailable": why, "rows": []}
    out = Path(args.out)
    _write_json(out, res)
    cfg = ModelConfig(cascades=K, chans=18, pools=4, sigma=K ** -0.5, sens="acs")
    torch.manual_seed(0)
    model = FlatModel(cfg).cuda().eval()
    vol = _model_workload(slices, C, H, W)
    from flat.capture import make_forward  # eager / compile / graphs (docs/gpu.md)
    from flat.inference import reconstruct

    ref_out = None
    gpu = [b for b in ok if b != "reference"]
    # the most informative cases first, inductor's compilation (the slowest start) last; a case
    # starts only with its expected first-call time left (s, predicted), so the stage ends before
    # its hard bound rather than being killed in the middle of one
    cases = [("recon", b, "eager", 8) for b in ["reference"] + gpu]
    cases += [("train", b, "eager", 10) for b in ["reference"] + gpu]
    cases += [("recon", b, "graphs", 12) for b in gpu + ["reference"]]
    cases += [("recon", b, "compile", 45) for b in gpu[:1] or ["reference"]]
    failed = 0
    for what, be, mode, need in cases:
        row = dict(case=what, backend=be, mode=mode)
        if dl.left() < need:
            row["error"] = "not run: stage time budget spent"
            res["rows"].append(row)
            continue
        try:
            if what == "recon":
                kw = {}
                if mode != "eager":
                    kw["forward"] = make_forward(model, mode, backend=be)
                t0 = time.monotonic()
                img = reconstruct(model, vol["masked"], vol["mask"], vol["nlf"], backend=be, **kw)
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.monotonic() - t0, 2)
                if ref_out is None:
                    ref_out = img
                row["rel_err_vs_reference_eager"] = float((img - ref_out).norm() / ref_out.norm())
                torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(3):
                    t0 = time.monotonic()
                    reconstruct(model, vol["masked"], vol["mask"], vol["nlf"], backend=be, **kw)
                    torch.cuda.synchronize()
                    times.append(time.monotonic() - t0)
                row["slices_per_s"] = round(slices / sorted(times)[1], 2)
                row["peak_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            else:
                m = FlatModel(cfg).cuda().train()
                opt = torch.optim.AdamW(m.parameters(), lr=1e-5)
                B = 1
                k = vol["masked"][:B].cuda()
                full, tgt, mx = vol["full"][:B].cuda(), vol["target"][:B].cuda(), vol["max_value"][:B].cuda()
                mask = vol["mask"].cuda()

                def step():
                    o = m(k, mask, vol["nlf"], backend=be)
                    loss, _ = flat_loss(o.images, o.times, o.scale, tgt, mx, m.target_image(full, o),
                                        velocity_weight=1.0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    return loss

                t0 = time.monotonic()
                loss = step()
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.monotonic() - t0, 2)
                row["loss_finite"] = bool(torch.isfinite(loss))
                torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(3):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    step()
                    b.record()
                    torch.cuda.synchronize()
                    times.append(a.elapsed_time(b))
                row["step_ms"] = round(sorted(times)[1], 2)
                row["peak_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                row["B"] = B
                del m, opt
        except Exception as exc:  # noqa: BLE001
            failed += 1
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            traceback.print_exc()
        res["rows"].append(row)
        _write_json(out, res)
        print("model", json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return 1 if failed else 0


# ---------------------------------------------------------------- summary
def _pytest_counts(log: Path) -> str:
    if not log.is_file():
        return "no log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return lines[-1].strip("= ") if lines else "no result line"


def summarize(out: Path) -> str:
    """The Markdown summary of one run (stages, tests, sanitizer, micro and model tables)."""
    env = (out / "env.txt").read_text(errors="replace") if (out / "env.txt").is_file() else ""
    pick = [ln for ln in env.splitlines() if re.match(r"(date|device|torch|triton|cupy|python):", ln)]
    lines = ["### GPU check (scripts/gpu_check.sh)", ""] + [f"- {ln}" for ln in pick] + [""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    stages = (out / "stages.log").read_text(errors="replace") if (out / "stages.log").is_file() else ""
    for m in re.finditer(r"^stage (\w+) rc=(-?\d+) s=(\d+) status=(\w+)", stages, re.M):
        lines.append(f"| {m.group(1)} | {m.group(4)} (rc {m.group(2)}) | {m.group(3)} |")
    lines += [f"- {ln}" for ln in env.splitlines() if ln.startswith("FAIL")]
    lines += ["", f"pytest -m gpu: {_pytest_counts(out / 'pytest-gpu.log')}"]
    san = out / "sanitizer.log"
    if san.is_file():
        t = san.read_text(errors="replace")
        m = re.search(r"ERROR SUMMARY: (\d+) error", t)
        verdict = (f"{m.group(1)} errors" if m else
                   next((ln for ln in t.splitlines() if ln.startswith("skipped")), "no ERROR SUMMARY line"))
        lines.append(f"compute-sanitizer memcheck: {verdict}")
    micro = _load(out / "micro.json")
    if micro:
        lines += ["", f"flow_step (Aᴴy given), complex64; copy bandwidth {micro.get('copy_Bps', 0) / 1e9:.0f} GB/s",
                  "", "| size | B | mask | backend | precision | fwd µs (2 runs) | floor µs | GB/s (% copy) | fwd+bwd µs "
                  "| rel err vs c128 | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in micro.get("rows", []):
            head = f"| {r['size']} | {r['B']} | {r['mask']} | {r['backend']} | {r.get('precision') or '-'} |"
            if "error" in r:
                lines.append(f"{head} {r['error'][:80]} | | | | | |")
                continue
            lines.append(f"{head} {' / '.join(str(t) for t in r['fwd_us'])} | {r['floor_us']} | "
                         f"{r['fwd_GBps']} ({100 * r['fwd_copy_frac']:.0f} %) | {r['fwdbwd_us']} | "
                         f"{r['rel_err_c128']:.1e} | {r['fwd_peak_MB']} |")
    model = _load(out / "model.json")
    if model:
        lines += ["", f"Model: {model.get('model')}; recon of {model.get('data')}; train step B = 1", "",
                  "| case | backend | mode | slices/s or step ms | peak MB | first call s | rel diff vs reference eager |",
                  "|---|---|---|---|---|---|---|"]
        for r in model.get("rows", []):
            head = f"| {r['case']} | {r['backend']} | {r['mode']} |"
            if "error" in r:
                lines.append(f"{head} {r['error'][:80]} | | | |")
                continue
            val = f"{r['slices_per_s']} slices/s" if "slices_per_s" in r else f"{r['step_ms']} ms"
            rel = r.get("rel_err_vs_reference_eager")
            lines.append(f"{head} {val} | {r.get('peak_MB')} | {r.get('first_call_s')} | "
                         f"{f'{rel:.1e}' if rel is not None else '-'} |")
    return "\n".join(lines) + "\n"


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmd_summary(args) -> int:
    out = Path(args.dir)
    text = summarize(out)
    _write_json_text(out / "summary.md", text)
    print(text)
    return 0


def _write_json_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="stages of scripts/gpu_check.sh")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("env")
    sub.add_parser("sanitize")
    for name in ("micro", "model"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True)
        p.add_argument("--deadline", type=float, default=0, help="stop starting cases after this many seconds")
    p = sub.add_parser("summary")
    p.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    return {"env": cmd_env, "sanitize": cmd_sanitize, "micro": cmd_micro, "model": cmd_model,
            "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
