"""The ``flat`` command line.

Each subcommand is a small module of this package exposing ``add_arguments(parser)`` and
``run(args) -> int``; ``run`` imports its library module (torch and all) only when the command
runs, so building the parser -- and ``flat --help`` -- stays light. This file wires the commands
together and turns errors into one line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("flat.cli.demo", "build demo data, train FLAT and the vanilla baseline, compare (CPU, minutes)"),
    "train": ("flat.cli.train", "train a model on fastMRI-format data (also under torchrun)"),
    "recon": ("flat.cli.recon", "reconstruct fastMRI files into submission files"),
    "eval": ("flat.cli.eval", "fastMRI metrics (NMSE, PSNR, SSIM) of predictions against targets"),
    "data": ("flat.cli.data", "data utilities (`flat data demo OUT`)"),
}


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``flat recon: error: ...``, status 2) like every
    other refusal; ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print(f"flat {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback; FLAT_DEBUG=1 shows it
        if os.environ.get("FLAT_DEBUG"):
            raise
        from flat.io import WriteError, describe_os_error  # standard library only

        # a full disk or a permission problem in words (with the path), not errno/HDF5 internals
        msg = None if isinstance(exc, WriteError) else describe_os_error(exc)
        if msg is None:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"flat {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
