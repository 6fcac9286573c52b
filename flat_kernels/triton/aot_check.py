"""Compile the Triton kernels for a GPU target without a GPU, and report their resource use.

    python -m flat_kernels.triton.aot_check [--arch 90] [--json]

The interpreter (TRITON_INTERPRET=1) proves the numerics on the CPU but accepts programs the real
compiler rejects and says nothing about shared memory or registers. This compiles, to a cubin with
Triton's bundled ptxas, the launches that flat_kernels/roofline.py does not already compile, and
reads their resources with cuobjdump:

* the 2-D path (fft_epilogue.py: 2-D masks, column masks of widths other than 16·N2, the k-space
  form and the sense ops), complex64 and complex128, every kernel at the flag set with the most
  operands, at the knee tiling (the brain's W = 320 pads to the same 512-wide tile);
* the factored-DFT row kernels (monarch.py) in the complex64 precisions the model does not price
  ("ieee" and the opt-in "tf32"): forward and each backward pass, knee (C = 15, W = 368) and brain
  (C = 20, W = 320), from the model's own variant list, so the launch configuration is the one
  ``monarch.launch_config`` gives. The default precisions (complex64 tf32x3, complex128) are
  compiled, and checked for spills, by the model (tests/test_kernel_resources.py).

Must run in a process where TRITON_INTERPRET is unset (tests run it in a subprocess).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

from flat_kernels import roofline as rl

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
ROW_PRECISIONS = ("ieee", "tf32")  # complex64 modes besides the default (flat_kernels/triton/_common.py)


def _variants():
    """(label, kernel, pointer type, warps, stages or None, constexprs) per compiled launch."""
    from . import fft_epilogue as fe

    out = []
    for dname, ptr in (("c64", "*fp32"), ("c128", "*fp64")):
        BR, BW, _ = fe._tiling(640, 368)
        t = dict(BLOCK_R=BR, BLOCK_W=BW)
        out += [  # the launchers' 4 warps (Triton's default: fft_epilogue.py passes none)
            (f"expand {dname}", fe._expand_kernel, ptr, 4, None, t),
            (f"mid {dname}", fe._mid_kernel, ptr, 4, None, dict(t, HAS_T=True, Y_SIGN=-1, HAS_M=True)),
            (f"reduce {dname}", fe._reduce_kernel, ptr, 4, None,
             dict(t, HAS_X=True, HAS_V=True, HAS_AHY=True, OUT_IMG=True, OUT_S=True)),
            (f"bwd2d {dname}", fe._bwd2d_kernel, ptr, 4, None,
             dict(t, HAS_X=True, HAS_V=True, HAS_AHY=True, NEED_X=True, NEED_S=True, NEED_R=True, NEED_PX=True)),
            (f"kspace {dname}", fe._kspace_kernel, ptr, 4, None, dict(t, HAS_K=True, MASK_T=False)),
            (f"kbwd {dname}", fe._kbwd_kernel, ptr, 4, None, dict(t, NEED_K=True, NEED_Y=True, NEED_R=True)),
        ]
    from . import monarch

    for v in rl._triton_variants(quick=True):
        if v["dtype"] != "c64":
            continue
        C, _, W = rl.WORKLOADS[v["workload"]]
        for prec in ROW_PRECISIONS:
            # the kernels and tiles these precisions launch (tf32x3 has its own _mt_ kernels, monarch.kernel_name)
            fn = getattr(monarch, monarch.kernel_name(v["kind"], "fp32", prec))
            cfg = monarch.launch_config(v["kind"], C, W, "fp32", prec=prec)
            nw, ns = cfg.pop("num_warps"), cfg.pop("num_stages", None)
            consts = {k: val for k, val in dict(v["consts"], **cfg, PREC=prec).items() if k in fn.arg_names}
            label = f"{v['kernel']} {v['dtype']} {prec} {v['workload']}"
            out.append((label, fn, v["ptr"], nw, ns, consts))
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
    for label, fn, ptr, nw, stages, consts in _variants():
        if select and not any(t in label for t in select):
            continue
        row = dict(kernel=label, num_warps=nw)
        opts = {"num_warps": nw} if stages is None else {"num_warps": nw, "num_stages": stages}
        try:
            k = triton.compile(ASTSource(fn=fn, signature=rl.triton_signature(fn, ptr, consts), constexprs=consts),
                               target=GPUTarget("cuda", arch, 32), options=opts)
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
