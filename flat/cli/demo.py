"""``flat demo [--out DIR]``: build demo data, train FLAT and the vanilla baseline, compare
(:func:`flat.demo.run_demo`)."""
from __future__ import annotations

# Steps per model, and a wall-clock cap per model so that the whole demo stays within 10 minutes
# on a 2-core CPU even when the machine is busy (measured; see README). Defined here, beside the
# flags whose help shows them; flat.demo uses the same values as its defaults.
DEFAULT_STEPS = 1500
DEFAULT_TIME_LIMIT_S = 420.0


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out)")
    parser.add_argument("--data", default=None,
                        help="use an existing data folder with train/ val/ test/ subfolders instead of "
                             "building the demo data")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"training steps per model (default {DEFAULT_STEPS})")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S,
                        help=f"training wall-clock cap per model in seconds, 0 = none "
                             f"(default {DEFAULT_TIME_LIMIT_S:g})")
    parser.add_argument("--preset", default="demo", help="config preset for both models (default: demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to both models, e.g. --set model.cascades=8")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data set and training")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:N]: training, models and baselines (default: cuda if available)")
    parser.add_argument("--backend", default=None, choices=("auto", "reference", "triton", "cupy"),
                        help="data-consistency backend (default: auto, the fastest on the device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from flat.config import apply_overrides, get_preset
    from flat.demo import _split_files, format_table, run_demo  # the library, on use: keeps the parser light
    from flat.io import check_writable_dir

    # refused before --out is created (docs/robustness.md): where it goes, the data, the config
    check_writable_dir(args.out, "--out")
    if args.data is not None:
        _split_files(args.data)
    apply_overrides(get_preset(args.preset), args.overrides).validate()
    res = run_demo(args.out, data=args.data, steps=args.steps, time_limit_s=args.time_limit, preset=args.preset,
                   overrides=args.overrides, seed=args.seed, progress=not args.no_progress,
                   device=args.device, backend=args.backend)
    print(format_table(res))
    print(f"\nwrote {', '.join(res['files'])} in {res['out']} ({res['wall_s']:.0f} s in all)")
    return 0
