"""The command line stays thin: building the parser imports no library module (and no torch)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# flat.config is the config schema (standard library only); the parser takes its MASK_TYPES
LIGHT = {"flat", "flat.cli", "flat.config"}


def _imported_after(code: str) -> list[str]:
    probe = (f"import sys; {code}; "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('flat', 'torch', 'numpy', 'h5py', 'skimage', 'tqdm'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


def test_build_parser_imports_no_library_module():
    mods = _imported_after("import flat.cli; flat.cli.build_parser().parse_args(['recon', '-', 'd', 'o'])")
    heavy = [m for m in mods if m not in LIGHT and not m.startswith("flat.cli.")]
    assert heavy == []
    # every command module was imported (the check above saw the whole parser)
    import flat.cli as cli

    assert {m for m in mods if m.startswith("flat.cli.")} == {mod for mod, _ in cli.COMMANDS.values()}


def test_running_a_command_imports_its_library_module():
    # the converse, so the test above cannot pass by never loading anything: run() loads the library
    mods = _imported_after("import flat.cli; flat.cli.main(['eval', '/nonexistent-pred', '/nonexistent-tgt'])")
    assert "flat.evaluate" in mods and "flat.metrics" in mods


def test_public_names():
    from flat.cli import CommandError, build_parser, main

    assert issubclass(CommandError, Exception) and callable(main)
    assert build_parser().prog == "flat"
