"""``hf-ext``: the command-line dispatcher and the argument helpers its commands share.

Each technique's commands live in ``hf_ext/<technique>/commands.py`` and are imported only when that command
runs, so ``hf-ext --help`` imports no technique, torch, datasets or peft.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import HfExtError
from .version import __version__

# name: (module holding add_parser, help); the order is the order of ``hf-ext --help``
COMMANDS = {
    "targets": ("hf_ext.commands", "list the linear modules a pattern selects and the attention layout of a model"),
    "data": ("hf_ext.commands", "built-in text tasks"),
    "plan": ("hf_ext.commands", "memory per rank of each phase or arm of a recipe's config, before it runs"),
    "warp": ("hf_ext.warp.commands", "check and score a WaRP run (recipes/warp.py)"),
    "heads": (
        "hf_ext.heads.commands",
        "redo the head-plasticity analysis from saved files; pruning curves of saved models",
    ),
    "drift": ("hf_ext.drift.commands", "representation dumps and drift (CKA, cosine) from a base model"),
    "lora-null": ("hf_ext.lora_null.commands", "verify LoRA-Null adapters"),
    "selective": ("hf_ext.selective.commands", "selective-layer training (recipes/seq_cls.py)"),
}


def allow_pickle_weights_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--allow-pickle-weights`` to a command that loads a model or adapter."""
    parser.add_argument(
        "--allow-pickle-weights",
        action="store_true",
        help="load model or adapter weights saved only as pickles (.bin/.pt/.pth), as tensors only "
        "(torch.load weights_only=True); without it such a directory is refused",
    )


def integer_at_least(low: int, name: str):
    """An argparse ``type`` for integers >= ``low`` (``name`` describes them in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {name} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {name} integer, got {value}")
        return value

    return parse


positive_int = integer_at_least(1, "positive")
non_negative_int = integer_at_least(0, "non-negative")


def check_new_file(path: str | None, option: str = "--json") -> None:
    """``option`` names a file to create: an existing file or a directory is refused before any work."""
    from pathlib import Path

    if path and Path(path).exists():
        raise FileExistsError(f"{option} {path} already exists; name a new file (nothing was overwritten)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``hf-ext`` parser; only ``command``'s own subparser is built in full (its module imported)."""
    parser = argparse.ArgumentParser(
        prog="hf-ext", description="Command-line tools around hf_ext: model inspection, data export, analysis of runs."
    )
    parser.add_argument("--version", action="version", version=f"hf_ext {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(commands, name, help)
        else:
            commands.add_parser(name, help=help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return args.run_command(args) or 0
    except (HfExtError, ValueError, OSError, RuntimeError) as err:
        print(f"hf-ext {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
