"""``flat train --train DIR --val DIR --out DIR [--config FILE] [--set key=value ...]``
(also under ``torchrun -m flat train``): :func:`flat.train.train` on a config built from a preset,
an optional JSON file and overrides."""
from __future__ import annotations

import os


def add_arguments(parser) -> None:
    parser.add_argument("--train", required=True, help="folder (or file) of fully sampled fastMRI training data")
    parser.add_argument("--val", required=True, help="folder (or file) of fully sampled fastMRI validation data")
    parser.add_argument("--out", required=True, help="output folder; an existing run there is resumed")
    parser.add_argument("--config", default=None, help="JSON file with model/data/train sections (partial ok)")
    parser.add_argument("--preset", default="default", help="base preset: default, demo, demo-vanilla, knee, brain (fastMRI's scale), tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.cascades=8 (repeatable)")
    parser.add_argument("--init-from", default=None, metavar="FILE",
                        help="start a new run from a fastMRI VarNet state dict: its architecture and "
                        "weights (FLAT: DC weights on the time grid; docs/varnet.md)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--backend", default=None, help="flat.ops backend: reference, triton, cupy, auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--tensorboard", default=None, metavar="DIR",
                        help="also write TensorBoard event files to DIR (needs the tensorboard package)")


def run(args) -> int:
    from flat.config import load_config
    from flat.checkpoint import MODEL_FILE, STATE_FILE
    from flat.checks import check_train_inputs
    from flat.io import remove_stale_temps
    from flat.train import train  # the library, on use: keeps the parser light

    if args.tensorboard is not None:  # refused before any work, in one line
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("--tensorboard: the tensorboard package is not installed (pip install tensorboard)")
    cfg = load_config(args.config, args.overrides, preset=args.preset)
    if args.init_from is not None:  # the architecture (and FLAT's grid) from the VarNet's tensors
        from flat.model.varnet import varnet_model_config

        cfg = cfg.replace(model=varnet_model_config(args.init_from, base=cfg.model))
    # every input checked before OUT is created or a step is trained (flat/checks.py)
    check_train_inputs(cfg, args.train, args.val, args.out, device=args.device, backend=args.backend)
    if os.environ.get("RANK", "0") == "0":
        # what a killed run left (the writes reuse the same names anyway)
        remove_stale_temps(args.out, [STATE_FILE, MODEL_FILE, "metrics.jsonl"])
    train(cfg, args.train, args.val, args.out, device=args.device, backend=args.backend,
          progress=not args.no_progress, init_from=args.init_from, tensorboard=args.tensorboard)
    return 0
