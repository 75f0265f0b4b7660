"""The ``fairtune`` console command: ``fairtune train --config configs/quickstart.yaml [--key value ...]``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError)
USAGE = """usage: fairtune <command> [options]

commands:
  train     fine-tune with fairness metrics from a YAML config (see `fairtune train --help`)
"""


def train_main(argv: Sequence[str] | None = None) -> None:
    """Parse the config and flags, then run training, evaluation and the report."""
    from fairtune.config import parse_config
    from fairtune.pipeline import build, train_and_report

    # Mistakes in the config or the data surface before training: say them plainly, without a traceback.
    try:
        model_args, data_args, training_args = parse_config(argv)
        trainer, data = build(model_args, data_args, training_args)
    except USER_ERRORS as err:
        sys.exit(f"fairtune: error: {err}")
    train_and_report(trainer, data, model_args, data_args)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        train_main(rest)
    else:
        sys.exit(f"fairtune: error: unknown command {command!r}; valid commands: train\n\n{USAGE}")
