"""``python -m pydpg`` and the ``pydpg`` console script (pyproject: ``pydpg.__main__:main``)."""

import sys
from typing import Optional, Sequence

from pydpg.cli.main import main as run


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Dispatch a subcommand (``train``, ``eval``, ``presets``) and exit with its status."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
