"""Faster inference forwards of a :class:`flat.model.FlatModel`: its K-cascade compiled, or captured
in a CUDA graph and replayed (``flat recon --compile`` / ``--cuda-graphs``; docs/gpu.md).

>>> fwd = make_forward(model, "graphs", backend="triton")     # model on a CUDA device, eval mode
>>> with torch.no_grad():
...     out = fwd(masked_kspace, mask, num_low_frequencies)    # FlatModel.forward's signature

Only :meth:`FlatModel.cascade` (the K Euler steps, network and data consistency) is compiled or
captured; the per-forward preparation (validation, normalisation, coil maps, Aᴴy, the device time
grid) runs eagerly as before. The cascade has no host sync and takes t, Δt and λ as device
tensors, so

* ``"compile"``: ``torch.compile(model.cascade, fullgraph=True)`` — one graph, the ``flat``
  custom ops opaque inside it; a new batch of the same shape reuses it (no recompilation);
* ``"graphs"``: one ``torch.cuda.CUDAGraph`` per input shape (and backend), captured after two
  eager warm-up runs (Triton JIT, NVRTC, cuFFT plans and DFT tables are built before capture);
  each call copies its inputs into the graph's static tensors, replays, and returns copies.
  Inference only (under ``torch.no_grad()``), CUDA tensors only.
"""
from __future__ import annotations

import torch

MODES = ("eager", "compile", "graphs")


def make_forward(model, mode: str = "eager", *, backend: str | None = None, compiler: str = "inductor"):
    """A callable with ``FlatModel.forward``'s signature running the cascade in ``mode``
    (``compiler``: the torch.compile backend of the ``"compile"`` mode)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if not callable(getattr(model, "cascade", None)):
        raise TypeError(f"model: expected a FlatModel (with a cascade method), got {type(model).__name__}")
    return _Forward(model, mode, backend, compiler)


class _Forward:
    def __init__(self, model, mode, backend, compiler):
        self.model, self.mode, self.backend, self.compiler = model, mode, backend, compiler
        self._compiled = None
        self._graphs: dict = {}  # (backend, device, shapes and dtypes) -> (graph, static inputs, outputs)

    def __call__(self, masked_kspace, mask, num_low_frequencies, *, sens=None, steps=None, backend=None):
        be = self.backend if backend is None else backend
        cascade = None if self.mode == "eager" else self._cascade
        return self.model(masked_kspace, mask, num_low_frequencies, sens=sens, steps=steps, backend=be,
                          cascade=cascade)

    def _cascade(self, ahy, y, S, mask, t, dts, lam, *, backend=None):
        args = (ahy, y, S, mask, t, dts, lam)
        if self.mode == "compile":
            if self._compiled is None:
                self._compiled = torch.compile(self.model.cascade, backend=self.compiler, fullgraph=True,
                                               dynamic=False)
            return self._compiled(*args, backend=backend)
        return self._replay(args, backend)

    # ---------------------------------------------------------------- CUDA graphs
    def _replay(self, args, backend):
        y = args[1]
        if y.device.type != "cuda":
            raise ValueError(f"cuda graphs: the data is on {y.device}; CUDA graphs need a CUDA device (--device cuda)")
        if torch.is_grad_enabled():
            raise RuntimeError("cuda graphs: inference only; call under torch.no_grad()")
        key = (backend, y.device, tuple((tuple(a.shape), a.dtype) for a in args))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(args, backend)
        graph, static_in, (images, k_state) = entry
        for dst, src in zip(static_in, args):
            dst.copy_(src)
        graph.replay()
        # the graph overwrites its outputs on the next replay: hand out copies
        return [im.clone() for im in images], k_state.clone()

    def _capture(self, args, backend):
        static_in = [a.clone() for a in args]

        def run():
            return self.model.cascade(*static_in, backend=backend)

        side = torch.cuda.Stream(device=static_in[1].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: every JIT, plan and table cache filled before capture
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return graph, static_in, out
