"""``flat data ...``: data utilities. ``flat data demo OUT`` writes the demo data set
(:func:`flat.data.demo.write_demo_dataset`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from flat.cli import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    demo = sub.add_parser(
        "demo",
        help="write the demo data set (Colin27 anatomy, simulated coils) as fastMRI files",
        description="Write OUT/{train,val,test}/*.h5: fastMRI-format multicoil files simulated from "
        "real Colin27 T1 anatomy (simulated coil maps, phase and noise; not raw scanner data).",
    )
    demo.add_argument("out", metavar="OUT", type=Path, help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="simulation seed (default: 0)")
    demo.add_argument("--matrix", type=positive_int, default=None, help="k-space/image size, 16 to 160 (default: 128)")
    demo.add_argument("--coils", type=positive_int, default=None, help="number of coils (default: 8)")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "demo":
        from flat.data.demo import write_demo_dataset  # the library, on use: keeps the parser light

        from flat.io import check_writable_dir

        check_writable_dir(args.out, "OUT")
        files = write_demo_dataset(args.out, seed=args.seed, matrix=args.matrix, num_coils=args.coils,
                                   progress=True)
        counts = ", ".join(f"{k}: {len(v)}" for k, v in files.items())
        print(f"flat data demo: wrote {sum(len(v) for v in files.values())} volumes to {args.out} ({counts}); "
              "real Colin27 anatomy with simulated coils, phase and noise")
        return 0
    raise ValueError(f"unknown data action {args.data_command!r}")
