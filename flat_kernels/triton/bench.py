"""Benchmark of the fused flow step: reference vs torch.compile(reference) vs Triton (docs/kernels.md, testing).

    python -m flat_kernels.triton.bench [--out FILE.md]      # on a CUDA GPU
    TRITON_INTERPRET=1 python -m flat_kernels.triton.bench --smoke   # CPU: checks the script runs

Per workload (knee 15×640×368, brain 16×640×320; B = 1 and 8; column mask at 4×, complex64):
median time of ``flow_step`` forward (Aᴴy precomputed, the per-cascade case) and forward+backward
(grads of x and S), each timed twice with ``triton.testing.do_bench`` over input sets rotated so
that they exceed the 50 MB L2; achieved bandwidth = counted bytes / median against a measured
device copy bandwidth; peak memory; relative error vs complex128 for tf32x3 (default) and tf32.
Counted bytes (forward, image form) = read S, x, v, Aᴴy + write x_next (docs/kernels.md (roofline) floor).
"""
from __future__ import annotations

import argparse
import datetime
import os

import torch

from flat_kernels.timing import copy_bandwidth, gpu_timer

WORKLOADS = [("knee", 15, 640, 368), ("brain", 16, 640, 320)]


def _inputs(B, C, H, W, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)

    def c(*s):
        return torch.randn(*s, dtype=torch.complex64, device=device, generator=g)

    S = c(B, C, H, W)
    S = S / S.abs().pow(2).sum(1, keepdim=True).sqrt()
    m = (torch.rand(1, 1, 1, W, device=device, generator=g) < 0.17).float()
    m[..., W // 2 - W // 25: W // 2 + W // 25] = 1  # 8 % ACS -> ~4x overall
    return dict(x=c(B, H, W), v=c(B, H, W), y=c(B, C, H, W), S=S, M=m,
                dt=torch.full((B,), 0.2, device=device), lam=torch.tensor(5.0, device=device))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU under TRITON_INTERPRET=1")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args(argv)

    import flat.ops as fo
    import flat_kernels.triton as ft

    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("bench: needs a CUDA GPU (or --smoke under TRITON_INTERPRET=1)")
    workloads = [("smoke", 2, 4, 12)] if args.smoke else WORKLOADS
    batches = (1,) if args.smoke else (1, 8)
    timer = gpu_timer(quick=args.smoke)
    bw = copy_bandwidth(device, nbytes=(4 << 20) if args.smoke else None)
    dev_name = "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name()
    lines = [
        f"Device: {dev_name}; torch {torch.__version__}; date {datetime.date.today()}; "
        f"copy bandwidth {bw / 1e9:.0f} GB/s",
        "",
        "| workload | B | path | fwd µs (2 runs) | fwd GB/s | % copy | fwd+bwd µs | peak MB | rel err vs c128 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    for name, C, H, W in workloads:
        for B in batches:
            elem = B * H * W * 8  # complex64 bytes per image
            counted = B * C * H * W * 8 + 4 * elem
            n_sets = max(1, int(2 * 50e6 // counted) + 1) if not args.smoke else 1
            sets = [_inputs(B, C, H, W, device, s) for s in range(n_sets)]
            for st in sets:
                st["ahy"] = fo.sense_adjoint(st["y"], st["S"], st["M"], backend="reference")
            ref = sets[0]
            r128 = {k: (v.to(torch.complex128) if v.is_complex() else v.double()) for k, v in ref.items()}
            want = fo.flow_step(r128["x"], r128["v"], None, r128["S"], r128["M"], r128["dt"], r128["lam"],
                                ahy=r128["ahy"], backend="reference")

            def step(st, backend, fn=fo.flow_step):
                return fn(st["x"], st["v"], None, st["S"], st["M"], st["dt"], st["lam"], ahy=st["ahy"], backend=backend)

            paths = [("reference", "reference", fo.flow_step)]
            if not args.smoke:
                paths.append(("compile(reference)", "reference", torch.compile(fo.flow_step, fullgraph=True)))
            paths += [("triton tf32x3", "triton", fo.flow_step), ("triton tf32 (opt-in)", "triton", fo.flow_step)]
            for label, backend, fn in paths:
                ft.set_precision("tf32" if "tf32 (" in label else "tf32x3")
                it = iter(range(1 << 30))

                def fwd():
                    return step(sets[next(it) % n_sets], backend, fn)

                def fwd_bwd():
                    st = sets[next(it) % n_sets]
                    x = st["x"].detach().requires_grad_(True)
                    S = st["S"].detach().requires_grad_(True)
                    out = fn(x, st["v"], None, S, st["M"], st["dt"], st["lam"], ahy=st["ahy"], backend=backend)
                    torch.autograd.grad(out, (x, S), grad_outputs=torch.ones_like(out))

                try:
                    err = float((step(ref, backend, fn) - want).abs().norm() / want.abs().norm())
                    if device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t1, t2 = timer(fwd), timer(fwd)
                    tb = timer(fwd_bwd)
                    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
                except Exception as exc:  # report, keep benchmarking the other paths
                    lines.append(f"| {name} | {B} | {label} | failed: {type(exc).__name__}: {exc} | | | | | |")
                    continue
                med = min(t1, t2)
                gbs = counted / (med * 1e-3) / 1e9
                lines.append(
                    f"| {name} {C}×{H}×{W} | {B} | {label} | {t1 * 1e3:.1f} / {t2 * 1e3:.1f} | {gbs:.0f} | "
                    f"{100 * gbs * 1e9 / bw:.0f} | {tb * 1e3:.1f} | {peak:.0f} | {err:.1e} |"
                )
            ft.set_precision("tf32x3")
            lines.append(f"| {name} | {B} | floor (counted {counted / 1e6:.1f} MB at copy bw) | "
                         f"{counted / bw * 1e6:.1f} | | | | | |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    if "--smoke" in os.sys.argv:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    main()
