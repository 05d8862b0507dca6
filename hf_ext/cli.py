"""``hf-ext``: command-line tools around the library (inspection, data export, analysis)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import HfExtError


def _targets(args: argparse.Namespace) -> None:
    from .config import ModelArguments
    from .models import load_model, load_tokenizer
    from .targets import find_attention, select_linear

    tokenizer = load_tokenizer(args.model)
    model = load_model(ModelArguments(model_name_or_path=args.model, task_type=args.task_type), tokenizer, ["a", "b"])
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


def _warp_verify(args: argparse.Namespace) -> int:
    from .warp.verify import format_checks, verify_run

    checks = verify_run(args.run)
    print(format_checks(checks))
    return 0 if all(c.ok for c in checks) else 1


def _warp_eval(args: argparse.Namespace) -> int:
    from .warp.study import WarpRun, evaluate_run, format_table

    rows = evaluate_run(WarpRun.from_dir(args.run))
    print(format_table(rows))
    print(f"written: {args.run}/eval.json, {args.run}/eval.md")
    return 0


def _heads_runs(run: str):
    from pathlib import Path

    from .errors import RunDirectoryError

    root = Path(run)
    seeds = sorted(p for p in root.glob("seed-*") if p.is_dir())
    if not seeds and not (root / "I_pre.jsonl").is_file():
        raise RunDirectoryError(
            f"{root} holds neither seed-* directories nor I_pre.jsonl: point --run at a head-plasticity output_dir "
            "or one of its seed directories"
        )
    return root, seeds or [root]


def _heads_aggregate(args: argparse.Namespace) -> int:
    from .heads.analysis import CaseThresholds, aggregate, aggregate_seeds

    root, runs = _heads_runs(args.run)
    thresholds = CaseThresholds(args.important, args.static, args.plastic, args.unimportant)
    for run in runs:
        saved = run / "stats.json"
        top_k = (
            args.top_k
            if args.top_k is not None
            else (json.loads(saved.read_text())["top_k"] if saved.is_file() else None)
        )
        stats = aggregate(run, top_k=top_k, thresholds=thresholds)
        print(
            f"{run}: I_pre vs Urel rho {stats['I_pre_vs_Urel']['spearman_rho']:.3f} "
            f"(p {stats['I_pre_vs_Urel']['p_value']:.3g}), I_pre vs "
            f"G_pre rho {stats['I_pre_vs_G_pre']['spearman_rho']:.3f}, "
            f"cases {stats['cases']}"
        )
    if len(runs) > 1:
        aggregate_seeds(root, runs)
        print(f"{root}: heads_across_seeds.csv, stats_across_seeds.json")
    return 0


def _heads_plot(args: argparse.Namespace) -> int:
    from .heads.analysis import plot

    for run in _heads_runs(args.run)[1]:
        for path in plot(run):
            print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-ext", description=__doc__)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"hf_ext {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    targets = commands.add_parser(
        "targets", help="list the linear modules a pattern selects and the attention layout of a model"
    )
    targets.add_argument("model", help="model name: embedded:minilm, tiny:llama, a hub id or a directory")
    targets.add_argument("patterns", nargs="*", help="target patterns, e.g. 'mlp.down_proj' 'layers.[0-1].mlp.*'")
    targets.add_argument("--layers", default=None, help="keep only these blocks, e.g. '28-31'")
    targets.add_argument("--task-type", default="seq_cls", choices=["seq_cls", "causal_lm"])
    targets.set_defaults(run_command=_targets)

    data = commands.add_parser("data", help="built-in text tasks").add_subparsers(dest="action", required=True)
    export = data.add_parser("export", help="write a built-in task as train/validation/test .jsonl files")
    export.add_argument("task", help="built-in task name (safety, sentiment, topic)")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--seed", type=int, default=0, help="generation seed")
    export.set_defaults(run_command=_export)

    warp = commands.add_parser("warp", help="check and score a WaRP run (recipes/warp.py)").add_subparsers(
        dest="action", required=True
    )
    verify = warp.add_parser("verify", help="check basis, reconstruction, mask ratio and frozen coefficients")
    verify.add_argument("--run", required=True, help="the run's output_dir")
    verify.set_defaults(run_command=_warp_verify)
    evaluate = warp.add_parser(
        "eval", help="held-out safety retention and utility of the phase-2, phase-3 and plain models"
    )
    evaluate.add_argument("--run", required=True, help="the run's output_dir")
    evaluate.set_defaults(run_command=_warp_eval)

    heads = commands.add_parser(
        "heads", help="redo the head-plasticity analysis from saved JSONL files"
    ).add_subparsers(dest="action", required=True)
    aggregate = heads.add_parser("aggregate", help="heads.csv, stats.json, cases.json (and across seeds)")
    aggregate.add_argument(
        "--run", required=True, help="a seed directory, or the output_dir holding seed-* directories"
    )
    aggregate.add_argument(
        "--top-k", type=int, default=None, help="K of the top-K overlap (default: the run's own, else 20 or all heads)"
    )
    for name, default in (("important", 90.0), ("static", 30.0), ("plastic", 90.0), ("unimportant", 30.0)):
        aggregate.add_argument(
            f"--{name}", type=float, default=default, help=f"{name} percentile (default {default:g})"
        )
    aggregate.set_defaults(run_command=_heads_aggregate)
    plot = heads.add_parser("plot", help="scatter, statistics and heatmap figures as PNG files")
    plot.add_argument("--run", required=True, help="a seed directory, or the output_dir holding seed-* directories")
    plot.set_defaults(run_command=_heads_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run_command(args) or 0
    except (HfExtError, ValueError, OSError, RuntimeError) as err:
        print(f"hf-ext {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
