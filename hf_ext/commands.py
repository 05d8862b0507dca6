"""The ``hf-ext`` commands that belong to no one technique: ``targets`` (model inspection) and ``data``."""

from __future__ import annotations

import argparse

from .cli import allow_pickle_weights_option


def _targets(args: argparse.Namespace) -> None:
    from .config import ModelArguments
    from .models import load_model, load_tokenizer
    from .targets import find_attention, select_linear

    tokenizer = load_tokenizer(args.model)
    model_args = ModelArguments(
        model_name_or_path=args.model, task_type=args.task_type, allow_pickle_weights=args.allow_pickle_weights
    )
    model = load_model(model_args, tokenizer, ["a", "b"])
    if args.patterns:
        selected = select_linear(model, args.patterns, layers=args.layers)
        print(f"{len(selected)} linear module(s) selected:")
        for name, module in selected.items():
            print(f"  {name}  in={module.in_features} out={module.out_features}")
    print("attention (layer, output projection, heads, kv heads, head dim):")
    for attention in find_attention(model):
        print(
            f"  {attention.layer:3d}  {attention.o}  {attention.num_heads} "
            f"{attention.num_kv_heads} {attention.head_dim}"
        )


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .tasks import load_builtin_task

    splits = load_builtin_task(args.task, seed=args.seed)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; name a directory")
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in splits.items():
        path = out / f"{split}.jsonl"
        dataset.to_json(str(path), lines=True)
        print(f"{path}: {len(dataset)} examples")


def add_parser(commands, name: str, help: str) -> None:
    """Add ``hf-ext targets`` or ``hf-ext data`` to the ``commands`` subparsers."""
    if name == "targets":
        targets = commands.add_parser(name, help=help)
        targets.add_argument("model", help="model name: embedded:minilm, tiny:llama, a hub id or a directory")
        targets.add_argument("patterns", nargs="*", help="target patterns, e.g. 'mlp.down_proj' 'layers.[0-1].mlp.*'")
        targets.add_argument("--layers", default=None, help="keep only these blocks, e.g. '28-31'")
        targets.add_argument("--task-type", default="seq_cls", choices=["seq_cls", "causal_lm"])
        allow_pickle_weights_option(targets)
        targets.set_defaults(run_command=_targets)
        return
    data = commands.add_parser(name, help=help).add_subparsers(dest="action", required=True)
    export = data.add_parser("export", help="write a built-in task as train/validation/test .jsonl files")
    export.add_argument("task", help="built-in task name (safety, sentiment, topic)")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--seed", type=int, default=0, help="generation seed")
    export.set_defaults(run_command=_export)
