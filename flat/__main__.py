"""``python -m flat ...`` (also ``torchrun -m flat train ...``)."""
from flat.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
