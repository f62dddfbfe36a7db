"""The ``pydpg`` command line: one module per subcommand (``main`` parses and dispatches ``train``,
``eval``, ``sweep`` and ``presets``; ``export``, ``run``, ``journey`` and ``cmake_dir`` own their
argument parsing)."""

from pydpg.cli.main import main

__all__ = ["main"]
