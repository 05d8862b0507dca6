"""``hf-ext selective``: inspect what a seq_cls config trains and what autograd records per block."""

from __future__ import annotations

import argparse


def _selective_inspect(args: argparse.Namespace) -> int:
    from ..parsing import parse_config
    from .study import SEQ_CLS_ARGUMENT_TYPES, format_inspection, inspect_config

    report, selection = inspect_config(*parse_config(SEQ_CLS_ARGUMENT_TYPES, [args.config, *args.overrides]))
    print(format_inspection(report, selection))
    return 0


def add_parser(commands, name: str, help: str) -> None:
    """Add ``hf-ext selective`` and its actions to the ``commands`` subparsers."""
    group = commands.add_parser(name, help=help).add_subparsers(dest="action", required=True)
    inspect = group.add_parser(
        "inspect",
        help="for one training batch of a seq_cls config: trainable parameters, autograd nodes and bytes saved "
        "for backward, per block",
    )
    inspect.add_argument("config", help="a seq_cls recipe config (.json)")
    inspect.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, as for the recipe")
    inspect.set_defaults(run_command=_selective_inspect)
