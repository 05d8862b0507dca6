"""``hf-ext heads``: redo the head-plasticity analysis from saved files; pruning curves of saved models."""

from __future__ import annotations

import argparse
import json

from ..cli import non_negative_int


def _heads_runs(run: str):
    from pathlib import Path

    from ..errors import RunDirectoryError

    root = Path(run)
    seeds = sorted(p for p in root.glob("seed-*") if p.is_dir())
    if not seeds and not (root / "I_pre.jsonl").is_file():
        raise RunDirectoryError(
            f"{root} holds neither seed-* directories nor I_pre.jsonl: point --run at a head-plasticity output_dir "
            "or one of its seed directories"
        )
    return root, seeds or [root]


def _heads_aggregate(args: argparse.Namespace) -> int:
    from .analysis import CaseThresholds, aggregate, aggregate_seeds, summary

    root, runs = _heads_runs(args.run)
    thresholds = CaseThresholds(args.important, args.static, args.plastic, args.unimportant)
    for run in runs:
        saved = json.loads((run / "stats.json").read_text()) if (run / "stats.json").is_file() else {}
        chosen = {  # an option not given keeps the run's own choice
            "top_k": args.top_k if args.top_k is not None else saved.get("top_k"),
            "metric": args.metric or saved.get("importance_metric", "loss"),
            "cases_by": args.cases_by or saved.get("cases_by", "Urel"),
            "bootstrap_samples": args.bootstrap_samples
            if args.bootstrap_samples is not None
            else saved.get("bootstrap_samples", 1000),
        }
        print(f"{run}:\n{summary(aggregate(run, thresholds=thresholds, **chosen))}")
    if len(runs) > 1:
        aggregate_seeds(root, runs, bootstrap_samples=chosen["bootstrap_samples"])
        print(f"{root}: heads_across_seeds.csv, stats_across_seeds.json")
    return 0


def _heads_prune_curve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..parsing import parse_config
    from .study import HEAD_STUDY_ARGUMENT_TYPES, prune_saved_model

    out = Path(args.out) if args.out else Path(args.model) / "prune_curve.json"
    record = prune_saved_model(
        args.model, *parse_config(HEAD_STUDY_ARGUMENT_TYPES, [args.config, *args.overrides]), out
    )
    for name, rows in record["curves"].items():
        shown = ", ".join(f"{100 * r['share_removed']:.0f}%: {r['accuracy']:.3f} ({r['loss']:.4f})" for r in rows)
        print(f"{name}: accuracy (loss) at heads removed {shown}")
    print(out)
    return 0


def _heads_plot(args: argparse.Namespace) -> int:
    from .analysis import plot

    for run in _heads_runs(args.run)[1]:
        for path in plot(run):
            print(path)
    return 0


def add_parser(commands, name: str, help: str) -> None:
    """Add ``hf-ext heads`` and its actions to the ``commands`` subparsers."""
    heads = commands.add_parser(name, help=help).add_subparsers(dest="action", required=True)
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
    aggregate.add_argument(
        "--metric",
        choices=["loss", "accuracy"],
        default=None,
        help="I_pre/I_post as loss increase or accuracy drop (default: the run's own, else loss)",
    )
    aggregate.add_argument(
        "--cases-by",
        choices=["Urel", "U"],
        default=None,
        help="update size the cases are cut on (default: the run's own, else Urel)",
    )
    aggregate.add_argument(
        "--bootstrap-samples",
        type=non_negative_int,
        default=None,
        help="resamplings for the 95%% intervals (default: the run's own, else 1000; 0: none)",
    )
    aggregate.set_defaults(run_command=_heads_aggregate)
    prune = heads.add_parser(
        "prune-curve",
        help="pruning curves of a saved model: heads ranked on a head-plasticity run's evaluation subset, "
        "curves evaluated on its held-out examples",
    )
    prune.add_argument("config", help="the head-plasticity config of the run (.json)")
    prune.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. prune_step=0.05")
    prune.add_argument("--model", required=True, help="a saved model, e.g. <output_dir>/seed-42/final")
    prune.add_argument("--out", default=None, help="JSON to write (default: <model>/prune_curve.json; figure beside)")
    prune.set_defaults(run_command=_heads_prune_curve)
    plot = heads.add_parser("plot", help="scatter, statistics and heatmap figures as PNG files")
    plot.add_argument("--run", required=True, help="a seed directory, or the output_dir holding seed-* directories")
    plot.set_defaults(run_command=_heads_plot)
