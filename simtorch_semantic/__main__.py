"""``python -m simtorch_semantic ...`` runs the ``simtorch-semantic`` command (see cli.py)."""
import sys

from simtorch_semantic.cli import main

if __name__ == "__main__":
    sys.exit(main())
