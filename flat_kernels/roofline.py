"""A compile-time performance model of the fused data-consistency kernels (no GPU needed).

    python -m flat_kernels.roofline [--jobs 2] [--json FILE] [--markdown FILE] [--quick]

**It is a model, not a measurement.** For every row-kernel variant the Triton launchers use (knee
15×640×368 and brain 20×640×320, B = 1 and 8, complex64 and complex128, forward and backward) it

1. compiles the kernel for sm_90 with Triton and its bundled ptxas (as ``triton/aot_check.py``),
   and reads registers, stack, spill stores/loads (ptxas ``-v``), shared memory, and from those
   the occupancy (CTAs per SM);
2. disassembles the cubin (``nvdisasm``) and counts the issued instructions per warp inside each
   loop nest: tensor-core (HMMA/DMMA/HGMMA, with their shapes), FP32 (FFMA/FADD/FMUL), FP64, and
   all instructions; loops are the backward branches of the SASS, multiplied by the launch's trip
   counts (the kernel module's ``loop_trips``: coil chunks for monarch.py), times warps per CTA
   and the grid;
3. counts the DRAM bytes a launch must move (every input read once, every output written once:
   the kernels re-read S chunk-wise, but those re-reads are L1/L2 hits and are not counted);
4. predicts time = max(bytes / copy bandwidth, tensor flops / MMA rate, FP32 ops / FP32 rate,
   instructions / issue rate), the compute terms stretched by the last partial wave,

against the ceilings in ``CEILINGS`` (each with its source). The **floor** of a step is the bytes
of its inputs and outputs at the copy bandwidth (docs/kernels.md). The CUDA C files under
``flat_kernels/cuda/`` are compiled with ``nvcc -arch=sm_90 -cubin -Xptxas -v`` (every kernel of
every ``.cu``, data-driven) for their resources and instruction mix; kernels that publish a launch
model (``model_launches`` in ``flat_kernels/cupy``) get a time as well.

Must run where TRITON_INTERPRET is unset. See flat_kernels/NOTES.md for the outcome.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

# ------------------------------------------------------------------ ceilings (each with its source)
# Datasheet: NVIDIA H100 SXM5 / H200 SXM product briefs (dense, no sparsity). 132 SMs, 1.98 GHz boost.
_DS = dict(sms=132, clock=1.98e9, tf32=494.7e12, bf16=989.4e12, fp64_tc=66.9e12, fp32=66.9e12, fp64=33.5e12)
CEILINGS = {
    "H200": dict(
        _DS, bw=4.3e12,
        bw_src="copy 4.3 TB/s measured on an H200 (docs/kernels.md; datasheet 4.8 TB/s)",
    ),
    "H100": dict(
        _DS, bw=3.0e12,
        bw_src="copy ~3.0 TB/s, ~90 % of the 3.35 TB/s datasheet (docs/kernels.md estimate, not measured)",
    ),
}
# Achievable fraction of the datasheet tensor rate. wgmma: 0.8 (dense bf16 ~790 of 989 TFLOP/s
# measured on an H200, docs/triton_row_kernel.md); mma.sync (what Triton emits for M < 64 tiles, and every
# DMMA): assumed 0.6 of the datasheet on Hopper (public microbenchmarks; unmeasured here).
MMA_EFF = {"wgmma": 0.8, "mma": 0.6}
FP32_EFF = 1.0  # datasheet FP32 / FP64 / issue rates, upper bounds (the model is optimistic there)
ISSUE_PER_SM_CLK = 4  # four warp schedulers per SM, one instruction each per clock
REGS_PER_SM, SMEM_PER_SM, SMEM_PER_CTA, MAX_WARPS, MAX_CTAS = 65536, 228 * 1024, 227 * 1024, 64, 32

WORKLOADS = {"knee": (15, 640, 368), "brain": (20, 640, 320)}
ACCEL = 4  # fastMRI 4x column mask: n_s = W / 4 sampled columns (92 knee, 80 brain)

_NVBIN = None


def _nvbin(tool: str) -> str:
    """Triton's bundled CUDA tools (ptxas, nvdisasm, cuobjdump), falling back to PATH."""
    global _NVBIN
    if _NVBIN is None:
        import triton

        _NVBIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    p = os.path.join(_NVBIN, tool)
    return p if os.path.exists(p) else (shutil.which(tool) or tool)


# ------------------------------------------------------------------ SASS analysis
_INS = re.compile(r"^\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LAB = re.compile(r"^\s*(\.L_x_\d+):")


def parse_sass(text: str) -> dict[str, list[tuple[int, str]]]:
    """nvdisasm -c output -> {function: [(address, instruction text)]}."""
    funcs: dict[str, list] = {}
    cur, labels, pending, fn_labels = None, {}, [], {}
    for ln in text.splitlines():
        m = re.match(r"^\s*\.text\.(\S+):", ln) or re.match(r"^\s*\.section\s+\.text\.(\S+),", ln)
        if m and ln.strip().endswith(":"):
            cur = m.group(1)
            funcs[cur] = []
            labels = fn_labels.setdefault(cur, {})
            continue
        m = _LAB.match(ln)
        if m and cur:
            pending.append(m.group(1))
            continue
        m = _INS.match(ln)
        if m and cur:
            a = int(m.group(1), 16)
            for lb in pending:
                labels[lb] = a
            pending = []
            funcs[cur].append((a, m.group(2)))
    return {f: (ins, fn_labels.get(f, {})) for f, ins in funcs.items()}


def _opcode(text: str) -> str:
    t = text.split()
    if t and t[0].startswith("@"):
        t = t[1:]
    return t[0] if t else ""


_MMA_SHAPE = {  # SASS opcode prefix -> (m, n, k) per instruction (per warp; HGMMA per warpgroup)
    "HMMA.1688": (16, 8, 8), "HMMA.16816": (16, 8, 16), "HMMA.1684": (16, 8, 4), "DMMA.884": (8, 8, 4),
    "DMMA.8816": (8, 8, 16), "IMMA.16832": (16, 8, 32),
}


def _mma_shape(op: str) -> tuple[int, int, int]:
    """(m, n, k) of one mma.sync instruction. nvdisasm spells HMMA shapes as digits ("HMMA.1688")
    but DMMA shapes with separators ("DMMA.8x8x4" for PTX m8n8k4, "DMMA.16x8x16" for m16n8k16: the
    fp64 shape differs between Triton versions), so both spellings are read; a shape neither
    spelling gives is an error, not a guess (a wrong guess scales the predicted tensor time)."""
    base = op.split(".")
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", base[1]) if len(base) > 1 else None
    if m:
        return tuple(int(g) for g in m.groups())
    key = ".".join(base[:2])
    if key not in _MMA_SHAPE:
        raise ValueError(f"unknown tensor-core instruction shape: {op}")
    return _MMA_SHAPE[key]


def _mma_flops(op: str) -> tuple[str, float]:
    """(unit, flops) of one tensor-core instruction; unit is 'tf32', 'bf16', 'fp64_tc'."""
    if op.startswith("HGMMA"):  # HGMMA.64xNxK.F32.TF32 ... issued once per warpgroup (4 warps)
        m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op)
        mm, nn, kk = (int(g) for g in m.groups())
        unit = "tf32" if "TF32" in op else ("fp64_tc" if "F64" in op else "bf16")
        return unit, 2.0 * mm * nn * kk / 4  # per issuing warp
    m, n, k = _mma_shape(op)
    if op.startswith("DMMA"):
        return "fp64_tc", 2.0 * m * n * k
    unit = "tf32" if "TF32" in op else "bf16"
    return unit, 2.0 * m * n * k


def count_sass(ins: list[tuple[int, str]], labels: dict[str, int]) -> dict:
    """Instruction counts per loop depth. Loops = backward branches (target address <= branch)."""
    loops = []
    for a, t in ins:
        m = re.search(r"BRA\s+(?:`\()?(\.L_x_\d+)", t)
        if m and "BRA" in _opcode(t):
            tgt = labels.get(m.group(1))
            if tgt is not None and tgt < a:  # a self-branch (the trap after EXIT) is not a loop
                loops.append((tgt, a))
    by_depth: dict[int, dict[str, float]] = {}
    for a, t in ins:
        d = sum(1 for s, e in loops if s <= a <= e)
        c = by_depth.setdefault(d, {"all": 0, "fp32": 0, "fp64": 0, "ldl": 0, "stl": 0,
                                    "tf32": 0.0, "bf16": 0.0, "fp64_tc": 0.0, "mma": 0, "wgmma": 0})
        op = _opcode(t)
        c["all"] += 1
        head = op.split(".")[0]
        if head in ("HMMA", "DMMA", "HGMMA"):
            unit, fl = _mma_flops(op)
            c[unit] += fl
            c["wgmma" if head == "HGMMA" else "mma"] += 1
        elif head in ("FFMA", "FADD", "FMUL", "FMNMX"):
            c["fp32"] += 1
        elif head in ("DFMA", "DADD", "DMUL"):
            c["fp64"] += 1
        elif head == "LDL":
            c["ldl"] += 1
        elif head == "STL":
            c["stl"] += 1
    # nesting structure: depth of each loop (a loop inside another has depth 2, ...)
    depths = sorted({sum(1 for s2, e2 in loops if s2 <= s and e <= e2) for s, e in loops})
    return {"by_depth": by_depth, "loop_depths": depths, "n_loops": len(loops)}


def _ptxas_log(log: str) -> dict:
    out = {}
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        out["stack"], out["spill_st"], out["spill_ld"] = (int(g) for g in m.groups())
    m = re.search(r"Used (\d+) registers", log)
    if m:
        out["regs"] = int(m.group(1))
    return out


def occupancy(regs: int, threads: int, smem: int) -> int:
    """Resident CTAs per SM (registers allocated per warp in units of 256, shared in 1 KB + 1 KB reserve)."""
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = REGS_PER_SM // (per_warp * warps)
    by_smem = SMEM_PER_SM // (math.ceil(smem / 1024) * 1024 + 1024) if smem else MAX_CTAS
    return max(0, min(by_regs, by_smem, MAX_WARPS // warps, MAX_CTAS))


# ------------------------------------------------------------------ Triton variants
def _triton_variants(quick: bool = False) -> list[dict]:
    """Every row-kernel launch the Triton launchers make for the column-mask flow step, with the
    kernel family the launcher picks for the width (``_ops.row_module``).

    fwd: flow_step with Aᴴy precomputed (the per-cascade case); bwd: all gradients (x, S, dt, lam),
    Aᴴy given (Aᴴy from y enters the same kernels as ahy = Σ_c conj(S_c)·q_c). complex64 at the default precision, complex128 fp64. Resources only: the other
    shipped forward flag sets (Aᴴy from y through q_c; normal). The kernels of the 2-D path are
    compiled by triton/aot_check.py.
    """
    from .triton import _common as cm
    from .triton import _ops

    out = []
    dtypes = [("c64", "*fp32", "fp32", cm.PRECISIONS[0]), ("c128", "*fp64", "fp64", "ieee")]
    fwd_flags = dict(HAS_X=True, HAS_V=True, HAS_AHY=True, HAS_Q=False)
    bwd_flags = dict(fwd_flags, NEED_X=True, NEED_S=True, NEED_R=True, NEED_PX=True)
    for wl, (C, H, W) in WORKLOADS.items():
        n_s = W // ACCEL
        mods = [(_ops.row_module(W), False)]
        for dname, ptr, real, prec in dtypes:
            esz = 8 if dname == "c64" else 16
            img, coil = H * W * esz, C * H * W * esz
            for mod, res_only in mods:
                fam = mod.__name__.rsplit(".", 1)[-1]
                for kind in ("fwd", "bwd"):
                    cfg = mod.launch_config(kind, C, W, real, prec=prec)
                    nw = cfg.pop("num_warps")
                    fn = f"{mod.__name__}:{mod.kernel_name(kind, real, prec)}"
                    nsplit = cfg.get("NSPLIT", 1)
                    trips = mod.loop_trips(kind, C, W, n_s, cfg)
                    # floor per batch item: fwd reads S, x, v, ahy, writes x_next;
                    # bwd reads S, g, x, v, ahy, writes grad_x, grad_S
                    floor = coil + 4 * img if kind == "fwd" else 2 * coil + 6 * img
                    passes = getattr(mod, "PASSES", {}).get(kind, [{}])
                    for i, extra in enumerate(passes):
                        flags = dict(fwd_flags if kind == "fwd" else bwd_flags)
                        names = set(_resolve(fn).arg_names)
                        consts = {k: val for k, val in dict(cfg, PREC=prec, **flags, **extra).items() if k in names}
                        if kind == "fwd":
                            per_b = floor
                        elif len(passes) == 1:  # + per-program partial sums
                            per_b = floor + H * nsplit * esz
                        elif i == 0:  # S, x, g, v, ahy in; t = P(S x) − q out (into grad_S's buffer)
                            per_b = 2 * coil + 4 * img
                        else:  # S, t, g, x in; grad_S, grad_x out
                            per_b = 3 * coil + 3 * img
                        tag = f"row_{kind}" + (f".{i + 1}" if len(passes) > 1 else "")
                        useful = 16.0 * C * W * n_s * H * (1 if kind == "fwd" else 2) / len(passes)
                        out.append(dict(
                            backend="triton", kernel=f"{fam}.{tag}", label=f"{fam}.{tag} {dname} {prec} {wl}",
                            workload=wl, dtype=dname, prec=prec, kind=kind, fn=fn, ptr=ptr, consts=consts,
                            num_warps=nw, num_stages=cfg.get("num_stages"), grid_per_b=H * nsplit, trips=trips,
                            bytes_per_b=per_b,
                            floor_per_b=floor / len(passes), useful_per_b=useful, cfg=dict(cfg, num_warps=nw),
                            resources_only=res_only,
                        ))
                if dname == "c64" and not quick and not res_only:
                    cfg = mod.launch_config("fwd", C, W, real, prec=prec)
                    nw = cfg.pop("num_warps")
                    cfg.pop("num_stages", None)
                    fwd_fn = f"{mod.__name__}:{mod.kernel_name('fwd', real, prec)}"
                    names = set(_resolve(fwd_fn).arg_names)
                    for tag, flags in (("normal", dict(HAS_X=False, HAS_V=False, HAS_AHY=False)),):
                        out.append(dict(backend="triton", kernel=f"{fam}.row_{tag}",
                                        label=f"{fam}.row_{tag} {dname} {prec} {wl}", workload=wl, dtype=dname,
                                        prec=prec, kind=tag, fn=fwd_fn, ptr=ptr,
                                        consts={k: val for k, val in dict(cfg, PREC=prec, **flags).items() if k in names},
                                        num_warps=nw, resources_only=True))
    return out


def _resolve(fn):
    """Kernels travel to worker processes by name (a JITFunction does not pickle)."""
    if isinstance(fn, str):
        import importlib

        mod, name = fn.split(":")
        return getattr(importlib.import_module(mod), name)
    return fn


def triton_signature(fn, ptr, consts):
    """Triton's compile signature of a kernel: constexprs, i32 sizes, i32 index pointers, data pointers."""
    ints = {"B", "C", "H", "W", "N2", "MB", "MH"}
    sig = {}
    for a in fn.arg_names:
        if a in consts:
            sig[a] = "constexpr"
        elif a in ints:
            sig[a] = "i32"
        elif a in ("idx_ptr", "cnt_ptr"):
            sig[a] = "*i32"
        else:
            sig[a] = ptr
    return sig


def compile_triton(fn, ptr: str, consts: dict, num_warps: int, arch: int = 90, num_stages: int | None = None) -> dict:
    """Compile one Triton kernel for sm_<arch>; resources, ptxas spill report and SASS counts."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("roofline: unset TRITON_INTERPRET (the interpreter replaces the compiler)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _resolve(fn)
    triton.knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
    triton.knobs.nvidia.dump_ptxas_log = True
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        k = triton.compile(ASTSource(fn=fn, signature=triton_signature(fn, ptr, consts), constexprs=consts),
                           target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=num_warps, **({} if num_stages is None else {"num_stages": num_stages})))
    res = dict(_ptxas_log(buf.getvalue()), shared=int(k.metadata.shared), threads=32 * num_warps)
    with tempfile.TemporaryDirectory() as td:
        cub = os.path.join(td, "k.cubin")
        with open(cub, "wb") as f:
            f.write(k.asm["cubin"])
        sass = subprocess.run([_nvbin("nvdisasm"), "-c", cub], capture_output=True, text=True).stdout
    funcs = parse_sass(sass)
    ins, labels = next(iter(funcs.values())) if funcs else ([], {})
    res["sass"] = count_sass(ins, labels)
    res["mma_layouts"] = re.findall(r"nvidia_mma<\{versionMajor = (\d), .*?warpsPerCTA = \[([\d, ]+)\]",
                                    k.asm.get("ttgir", ""))
    return res


def _compile_variant(v: dict) -> dict:
    try:
        return compile_triton(v["fn"], v["ptr"], v["consts"], v["num_warps"], num_stages=v.get("num_stages"))
    except Exception as exc:  # report every kernel, not only the first failure
        return {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}


# ------------------------------------------------------------------ CUDA C (data-driven over the .cu files)
def cuda_sources() -> list[str]:
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".cu")) if os.path.isdir(d) else []


def compile_cuda(path: str, arch: int = 90) -> list[dict]:
    """nvcc -arch=sm_<arch> -cubin -Xptxas -v on one .cu: one row per kernel (resources + SASS counts)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return [dict(file=os.path.basename(path), kernel="-", error="nvcc not found")]
    with tempfile.TemporaryDirectory() as td:
        cub = os.path.join(td, "k.cubin")
        p = subprocess.run([nvcc, f"-arch=sm_{arch}", "-cubin", "-Xptxas", "-v", "-o", cub, path],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return [dict(file=os.path.basename(path), kernel="-", error=p.stderr[-400:])]
        sass = subprocess.run([_nvbin("nvdisasm"), "-c", cub], capture_output=True, text=True).stdout
    log = p.stderr + p.stdout
    rows = []
    for m in re.finditer(r"Compiling entry function '(\w+)'.*?(?=Compiling entry function|\Z)", log, re.S):
        block = m.group(0)
        r = dict(file=os.path.basename(path), kernel=m.group(1), **_ptxas_log(block))
        sm = re.search(r"(\d+) bytes smem", block)
        r["shared"] = int(sm.group(1)) if sm else 0
        rows.append(r)
    funcs = parse_sass(sass)
    for r in rows:
        if r["kernel"] in funcs:
            r["sass"] = count_sass(*funcs[r["kernel"]])
    return rows


SMEM_B_PER_SM_CLK = 128  # 32 banks × 4 B per clock per SM (Hopper tuning guide)
ROW_THREADS_CUDA = 256


def cuda_row_models(cuda_rows: list[dict]) -> list[dict]:
    """Predicted time of the CUDA C one-pass row kernels, from their own work models
    (``flat_kernels.cupy._engine.row_step_work`` / ``row_grad_work`` / ``row_plan``: DRAM bytes, flops
    as coded, shared-memory wavefront bytes) and their compiled resources. kind "fwd": flow_step
    forward (v and Aᴴy given), flat_row_step; kind "bwd": its backward with learned maps (grad_x,
    grad_S, grad_dt, grad_lam; Aᴴy given), one flat_row_grad launch. Floors: fwd reads S, x, v, Aᴴy
    and writes x_next; bwd reads S, x, g, v, Aᴴy and writes grad_x, grad_S (at the copy bandwidth)."""
    import importlib.util

    # _engine.py imports neither CuPy nor torch, but its package __init__ imports CuPy: load the file
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cupy", "_engine.py")
    if not os.path.exists(path):
        return []
    spec = importlib.util.spec_from_file_location("_flat_cupy_engine_model", path)
    eng = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eng)
    if not hasattr(eng, "row_step_work"):
        return []
    res = {r["kernel"]: r for r in cuda_rows if not r.get("error")}
    out = []
    for wl, (C, H, W) in WORKLOADS.items():
        for dname, cb in (("c64", 8), ("c128", 16)):
            limits = (min(SMEM_PER_CTA, SMEM_PER_SM // 2 - 1024), SMEM_PER_CTA) if cb == 8 else (SMEM_PER_CTA,)
            img, coil = H * W * cb, C * H * W * cb
            for kind, name, kernel, floor_b in (("fwd", "row_step", f"flat_row_step_{dname}", coil + 4 * img),
                                                ("bwd", "row_grad", f"flat_row_grad_{dname}", 2 * coil + 5 * img)):
                k = res.get(kernel)
                if k is None or (kind == "bwd" and not hasattr(eng, "row_grad_work")):
                    continue
                plan = eng.row_plan(C, W, cb, limits) if kind == "fwd" else eng.row_plan(C, W, cb, limits, kernel=name)
                if plan is None:
                    continue
                cta = occupancy(k.get("regs") or 255, ROW_THREADS_CUDA, plan["smem_bytes"])
                for dev, ce in CEILINGS.items():
                    for B in (1, 8):
                        if kind == "fwd":
                            w = eng.row_step_work(B, C, H, W, cb, True, True, Cg=plan["Cg"])
                        else:
                            w = eng.row_grad_work(B, C, H, W, cb, has_q=False, has_r0=True, has_v=True,
                                                  want_gx=True, want_red=True, Cg=plan["Cg"])
                        slots = cta * ce["sms"]
                        waves = w["blocks"] / slots if slots else float("inf")
                        tail = math.ceil(waves) / waves if slots else float("inf")
                        rate = ce["fp32"] if cb == 8 else ce["fp64"]
                        terms = dict(mem=w["dram_bytes"] / ce["bw"], fp32=w["flops"] / rate * tail,
                                     smem=w["smem_wavefront_bytes"] / (SMEM_B_PER_SM_CLK * ce["sms"] * ce["clock"]) * tail)
                        bound = max(terms, key=terms.get)
                        out.append(dict(kernel=k["kernel"], kind=kind, workload=wl, dtype=dname, dev=dev, B=B,
                                        floor=B * floor_b / ce["bw"], time=terms[bound], bound=bound, terms=terms,
                                        ctas_per_sm=cta, Cg=plan["Cg"], smem=plan["smem_bytes"], regs=k.get("regs"),
                                        spill_st=k.get("spill_st")))
    return out


def cuda_row_steps(rows: list[dict]) -> list[dict]:
    """Forward + backward per (size, dtype, device, B) from cuda_row_models: times and floors summed."""
    by = {}
    for p in rows:
        by.setdefault((p["workload"], p["dtype"], p["dev"], p["B"]), {})[p.get("kind", "fwd")] = p
    out = []
    for (wl, d, dev, B), kinds in by.items():
        if set(kinds) != {"fwd", "bwd"}:
            continue
        f, b = kinds["fwd"], kinds["bwd"]
        t, fl = f["time"] + b["time"], f["floor"] + b["floor"]
        out.append(dict(workload=wl, dtype=d, dev=dev, B=B, fwd=f["time"], fwd_floor=f["floor"], bwd=b["time"],
                        bwd_floor=b["floor"], bwd_bound=b["bound"], time=t, floor=fl, ratio=t / fl))
    return out


# ------------------------------------------------------------------ the model
def predict(res: dict, v: dict, B: int, dev: str) -> dict:
    """Issued work and predicted time of one launch of variant ``v`` at batch ``B`` on ``dev``."""
    ce = CEILINGS[dev]
    sass = res["sass"]
    trips = v["trips"]
    got = sass["loop_depths"]
    if got != list(range(1, len(trips) + 1)):
        raise RuntimeError(f"{v['label']}: loop nest depths {got} do not match the launch's {len(trips)} loops")
    mult = [1] + [math.prod(trips[:d]) for d in range(1, len(trips) + 1)]
    per_warp = {}
    for d, c in sass["by_depth"].items():
        for key, val in c.items():
            per_warp[key] = per_warp.get(key, 0) + val * mult[d]
    grid = v["grid_per_b"] * B
    nw = v["num_warps"]
    tot = {k: val * nw * grid for k, val in per_warp.items()}
    cta = occupancy(res["regs"], res["threads"], res["shared"])
    slots = cta * ce["sms"]
    waves = grid / slots if slots else float("inf")
    tail = math.ceil(waves) / waves if slots else float("inf")  # the last partial wave idles SMs
    kind = "wgmma" if tot.get("wgmma", 0) else "mma"
    t_mma = (tot["tf32"] / ce["tf32"] + tot["bf16"] / ce["bf16"] + tot["fp64_tc"] / ce["fp64_tc"]) / MMA_EFF[kind]
    lanes = 32  # one FP32 warp instruction = 32 lane operations (FFMA counted as one, as the datasheet's 2 flops)
    t_fp32 = tot["fp32"] * lanes * 2 / (ce["fp32"] * FP32_EFF) + tot["fp64"] * lanes * 2 / ce["fp64"]
    t_issue = tot["all"] / (ce["sms"] * ISSUE_PER_SM_CLK * ce["clock"])
    t_mem = v["bytes_per_b"] * B / ce["bw"]
    terms = dict(mem=t_mem, mma=t_mma * tail, fp32=t_fp32 * tail, issue=t_issue * tail)
    bound = max(terms, key=terms.get)
    floor = v["floor_per_b"] * B / ce["bw"]
    issued_tc = tot["tf32"] + tot["bf16"] + tot["fp64_tc"]
    return dict(time=terms[bound], bound=bound, terms=terms, floor=floor, ctas_per_sm=cta, waves=waves,
                issued_tc=issued_tc, useful=v["useful_per_b"] * B, spill_instr=tot["ldl"] + tot["stl"])


def run(jobs: int = 2, quick: bool = False, arch: int = 90) -> dict:
    variants = _triton_variants(quick)
    with cf.ProcessPoolExecutor(max_workers=max(1, jobs)) as ex:
        results = list(ex.map(_compile_variant, variants))
    rows = []
    for v, res in zip(variants, results):
        row = {k: v[k] for k in ("backend", "kernel", "label", "workload", "dtype", "prec", "kind", "num_warps")}
        row.update({k: res.get(k) for k in ("regs", "stack", "spill_st", "spill_ld", "shared", "error")})
        row["mma_layouts"] = res.get("mma_layouts")
        if "error" not in res:
            row["ctas_per_sm"] = occupancy(res["regs"], res["threads"], res["shared"])
        if "error" not in res and not v.get("resources_only"):
            row["cfg"] = v["cfg"]
            row["pred"] = {f"{dev} B{B}": predict(res, v, B, dev) for dev in CEILINGS for B in (1, 8)}
        rows.append(row)
    cuda = [r for p in cuda_sources() for r in compile_cuda(p, arch)]
    return dict(triton=rows, cuda=cuda, cuda_row=cuda_row_models(cuda))


# ------------------------------------------------------------------ report
def _us(t):
    return f"{t * 1e6:.1f}"


def markdown(rep: dict) -> str:
    L = ["**predicted** — a compile-time model (`python -m flat_kernels.roofline`), not a measurement: "
         "sm_90 code compiled on a CPU machine; time = max(DRAM bytes / copy bandwidth, issued tensor "
         "flops / achievable MMA rate, FP32 instructions / FP32 rate, instructions / issue rate), compute "
         "terms stretched by the last partial wave. Ceilings: " + "; ".join(
             f"{d}: {c['bw'] / 1e12:.1f} TB/s ({c['bw_src']})" for d, c in CEILINGS.items())
         + f"; tensor tf32 {_DS['tf32'] / 1e12:.0f} / bf16 {_DS['bf16'] / 1e12:.0f} / fp64 {_DS['fp64_tc'] / 1e12:.1f} "
         f"TFLOP/s datasheet × {MMA_EFF['mma']} for mma.sync (assumed) or × {MMA_EFF['wgmma']} for wgmma "
         f"(measured bf16 ratio); FP32 {_DS['fp32'] / 1e12:.1f} TFLOP/s, {_DS['sms']} SMs at {_DS['clock'] / 1e9:.2f} GHz "
         "(datasheet). Floor = read S, x, v, Aᴴy + write x_next (backward: read S, g, x, v, Aᴴy + write grad_x, grad_S) "
         f"at the copy bandwidth. Column mask at {ACCEL}× (n_s = W/{ACCEL}).", ""]
    L.append("| kernel | size | B | dev | floor µs | predicted µs | × floor | bound | issued TC GFLOP (× useful) "
             "| regs | stack B | spill st/ld B | smem KB | CTA/SM |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rep["triton"]:
        if "pred" not in r:
            continue
        for key, p in r["pred"].items():
            dev, B = key.split()
            L.append(f"| {r['kernel']} {r['dtype']} {r['prec']} | {r['workload']} | {B[1:]} | {dev} | {_us(p['floor'])} | "
                     f"{_us(p['time'])} | {p['time'] / p['floor']:.1f} | {p['bound']} | {p['issued_tc'] / 1e9:.1f} "
                     f"({p['issued_tc'] / p['useful']:.1f}) | {r['regs']} | {r['stack']} | {r['spill_st']}/{r['spill_ld']} | "
                     f"{r['shared'] / 1024:.0f} | {r['ctas_per_sm']} |")
    # per step: forward, backward (all its launches) and both, against their floors
    L += ["", "| step | size | B | dev | fwd µs (× floor) | bwd µs (× floor) | fwd+bwd µs | fwd+bwd floor µs | × floor |",
          "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rep["triton"]:
        for key, p in r.get("pred", {}).items():
            by.setdefault((r["kernel"].split(".")[0], r["dtype"], r["prec"], r["workload"], key), {}).setdefault(
                r["kind"], []).append(p)
    for (fam, d, prec, wl, key), kinds in by.items():
        if set(kinds) != {"fwd", "bwd"}:
            continue
        f = {k: (sum(p["time"] for p in ps), sum(p["floor"] for p in ps)) for k, ps in kinds.items()}
        dev, B = key.split()
        t, fl = f["fwd"][0] + f["bwd"][0], f["fwd"][1] + f["bwd"][1]
        L.append(f"| {fam} row {d} {prec} | {wl} | {B[1:]} | {dev} | {_us(f['fwd'][0])} ({f['fwd'][0] / f['fwd'][1]:.1f}) | "
                 f"{_us(f['bwd'][0])} ({f['bwd'][0] / f['bwd'][1]:.1f}) | {_us(t)} | {_us(fl)} | {t / fl:.1f} |")
    if any("pred" not in r for r in rep["triton"]):
        L += ["", "Other shipped row-kernel variants (resources only):", "",
              "| kernel | regs | stack B | spill st/ld B | smem KB |", "|---|---|---|---|---|"]
    for r in rep["triton"]:
        if "pred" not in r:
            L.append(f"| {r['label']} | {r.get('regs')} | {r.get('stack')} | {r.get('spill_st')}/{r.get('spill_ld')} | "
                     f"{(r.get('shared') or 0) / 1024:.0f} |" if not r.get("error") else f"| {r['label']} | error: {r['error']} ||||")
    if rep["cuda"]:
        L += ["", "CUDA C (`nvcc -arch=sm_90 -cubin -Xptxas -v`), per kernel, static SASS counts (loops once):", "",
              "| file | kernel | regs | stack B | spill st/ld B | smem B | instr | FP32 | MMA |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rep["cuda"]:
            if r.get("error"):
                L.append(f"| {r['file']} | {r['kernel']} | error: {r['error'][:120]} |||||||")
                continue
            s = r.get("sass", {}).get("by_depth", {})
            tot = lambda k: sum(c.get(k, 0) for c in s.values())  # noqa: E731
            L.append(f"| {r['file']} | {r['kernel']} | {r.get('regs')} | {r.get('stack')} | "
                     f"{r.get('spill_st')}/{r.get('spill_ld')} | {r.get('shared')} | {tot('all')} | {tot('fp32')} | "
                     f"{tot('mma') + tot('wgmma')} |")
    if rep.get("cuda_row"):
        L += ["", "CUDA C one-pass row kernels (CuPy backend): forward flow_step (`flat_row_step`) and its "
              "backward with learned maps (`flat_row_grad`: grad_x, grad_S, grad_dt, grad_lam, Aᴴy given), "
              "from their work models (`flat_kernels/cupy/_engine.py: row_step_work, row_grad_work`) and "
              "compiled resources; backward floor = read S, x, g, v, Aᴴy + write grad_x, grad_S; "
              f"shared-memory bandwidth {SMEM_B_PER_SM_CLK} B/clock/SM:", "",
              "| kernel | size | B | dev | floor µs | predicted µs | × floor | bound | coils/chunk | smem KB | CTA/SM |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in rep["cuda_row"]:
            L.append(f"| {p['kernel']} | {p['workload']} | {p['B']} | {p['dev']} | {_us(p['floor'])} | {_us(p['time'])} | "
                     f"{p['time'] / p['floor']:.1f} | {p['bound']} | {p['Cg']} | {p['smem'] / 1024:.0f} | {p['ctas_per_sm']} |")
        steps = cuda_row_steps(rep["cuda_row"])
        if steps:
            L += ["", "CUDA C row kernels, forward + backward with learned maps per step (**predicted**):", "",
                  "| step | size | B | dev | fwd µs (× floor) | bwd µs (× floor) | fwd+bwd µs | fwd+bwd floor µs | × floor |",
                  "|---|---|---|---|---|---|---|---|---|"]
            for q in steps:
                L.append(f"| row_step + row_grad {q['dtype']} | {q['workload']} | {q['B']} | {q['dev']} | "
                         f"{_us(q['fwd'])} ({q['fwd'] / q['fwd_floor']:.1f}) | {_us(q['bwd'])} ({q['bwd'] / q['bwd_floor']:.1f}) | "
                         f"{_us(q['time'])} | {_us(q['floor'])} | {q['ratio']:.1f} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description="compile-time performance model of the fused kernels (predicted)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="only the modelled variants")
    ap.add_argument("--json", help="write the raw report here")
    ap.add_argument("--markdown", help="write the markdown tables here")
    args = ap.parse_args(argv)
    rep = run(args.jobs, args.quick)
    md = markdown(rep)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1, default=str)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    bad = [r["label"] for r in rep["triton"] if r.get("error") or (r.get("spill_st") or 0) > 0]
    bad += [f"{r['file']}:{r['kernel']}" for r in rep["cuda"] if r.get("error") or (r.get("spill_st") or 0) > 0]
    if bad:
        print("spills or errors: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
