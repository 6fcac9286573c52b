"""Compile the Triton kernels for a GPU target without a GPU, and report their resource use.

    python -m flat_kernels.triton.aot_check [--arch 90] [--json]

The interpreter (TRITON_INTERPRET=1) proves the numerics on the CPU but accepts programs the real
compiler rejects and says nothing about shared memory or registers. This compiles every kernel
variant the launchers use at the knee (C = 15, W = 368) and brain (C = 20, W = 320) sizes, for
complex64 (tf32x3 and tf32) and complex128, to a cubin with Triton's bundled ptxas, and reads the
resources with cuobjdump. Must run in a process where TRITON_INTERPRET is unset (tests run it in a
subprocess). Blocks/warps come from the launchers' own helpers, so this mirrors real launches.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

from flat_kernels.roofline import triton_signature

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def _variants():
    from . import fft_epilogue as fe
    from . import flow_step as fs

    out = []
    for dname, ptr, precs in (("c64", "*fp32", ("tf32x3", "tf32")), ("c128", "*fp64", ("ieee",))):
        for wl, C, H, W in (("knee", 15, 640, 368), ("brain", 20, 640, 320)):
            # the sampled-DFT family (flow_step.py); the factored family the launchers use at these
            # widths (monarch.py) is compiled, with spills checked, by flat_kernels/roofline.py
            real = "fp32" if dname == "c64" else "fp64"
            for prec in precs:
                cfg = fs.launch_config("fwd", C, W, real)
                nw = cfg.pop("num_warps")
                base = dict(cfg, PREC=prec)
                out.append((f"row_fwd {dname} {prec} {wl}", fs._row_fwd_kernel, ptr, nw,
                            dict(base, HAS_X=True, HAS_V=True, HAS_AHY=True, HAS_Q=False)))
                out.append((f"row_fwd+q {dname} {prec} {wl}", fs._row_fwd_kernel, ptr, nw,
                            dict(base, HAS_X=True, HAS_V=True, HAS_AHY=False, HAS_Q=True)))
                cfg = fs.launch_config("bwd", C, W, real)
                nw = cfg.pop("num_warps")
                out.append((f"row_bwd {dname} {prec} {wl}", fs._row_bwd_kernel, ptr, nw,
                            dict(cfg, PREC=prec, HAS_X=True, HAS_V=True, HAS_AHY=False, HAS_Q=True, NEED_X=True,
                                 NEED_S=True, NEED_R=True, NEED_PX=True)))
        BR, BW, _ = fe._tiling(640, 368)
        t = dict(BLOCK_R=BR, BLOCK_W=BW)
        out += [
            (f"expand {dname}", fe._expand_kernel, ptr, 4, t),
            (f"mid {dname}", fe._mid_kernel, ptr, 4, dict(t, HAS_T=True, Y_SIGN=-1, HAS_M=True)),
            (f"reduce {dname}", fe._reduce_kernel, ptr, 4,
             dict(t, HAS_X=True, HAS_V=True, HAS_AHY=True, OUT_IMG=True, OUT_S=True)),
            (f"bwd2d {dname}", fe._bwd2d_kernel, ptr, 4,
             dict(t, HAS_X=True, HAS_V=True, HAS_AHY=True, NEED_X=True, NEED_S=True, NEED_R=True, NEED_PX=True)),
            (f"kspace {dname}", fe._kspace_kernel, ptr, 4, dict(t, HAS_K=True, MASK_T=False)),
            (f"kbwd {dname}", fe._kbwd_kernel, ptr, 4, dict(t, NEED_K=True, NEED_Y=True, NEED_R=True)),
        ]
    return out


def compile_report(arch: int = 90, select: list[str] | None = None) -> list[dict]:
    """One row per kernel variant (``select``: keep labels containing any of these substrings)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("aot_check: unset TRITON_INTERPRET (the interpreter replaces the compiler)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    rows = []
    for label, fn, ptr, nw, consts in _variants():
        if select and not any(t in label for t in select):
            continue
        row = dict(kernel=label, num_warps=nw)
        try:
            k = triton.compile(ASTSource(fn=fn, signature=triton_signature(fn, ptr, consts), constexprs=consts),
                               target=GPUTarget("cuda", arch, 32), options={"num_warps": nw})
            row["shared"] = int(k.metadata.shared)
            with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
                f.write(k.asm["cubin"])
            res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
            os.unlink(f.name)
            m = re.search(r"REG:(\d+) STACK:(\d+)", res)
            row["regs"], row["stack"] = (int(m.group(1)), int(m.group(2))) if m else (None, None)
            row["ok"] = row["shared"] <= SHARED_LIMIT.get(arch, 99 * 1024)
        except Exception as exc:  # report every kernel, not just the first failure
            row["ok"] = False
            row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description="compile the Triton kernels for a GPU target, report resources")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = compile_report(args.arch)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"| kernel (sm_{args.arch}) | warps | shared B | regs | spill stack B | ok |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['num_warps']} | {r.get('shared', '-')} | {r.get('regs', '-')} | "
              f"{r.get('stack', '-')} | {'yes' if r['ok'] else r.get('error', 'shared memory over limit')} |")


if __name__ == "__main__":
    main()
