"""``hf-ext``: command-line tools around the library (inspection, data export, analysis)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import HfExtError


def _allow_pickle_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-pickle-weights",
        action="store_true",
        help="load model or adapter weights saved only as pickles (.bin/.pt/.pth), as tensors only "
        "(torch.load weights_only=True); without it such a directory is refused",
    )


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


def _warp_seed_dirs(run: str) -> list[str]:
    """The seed-* directories of a WaRP study run with several seeds, else ``[run]``."""
    from pathlib import Path

    root = Path(run)
    seeds = sorted(p for p in root.glob("seed-*") if p.is_dir()) if not (root / "config.json").exists() else []
    return [str(p) for p in seeds] or [run]


def _warp_verify(args: argparse.Namespace) -> int:
    from .warp.verify import format_checks, verify_run

    passed = True
    for run in _warp_seed_dirs(args.run):
        checks = verify_run(run)
        print(f"{run}:\n{format_checks(checks)}" if run != args.run else format_checks(checks))
        passed &= all(c.ok for c in checks)
    return 0 if passed else 1


def _warp_eval(args: argparse.Namespace) -> int:
    from .warp.study import WarpRun, evaluate_run, format_table

    for run in _warp_seed_dirs(args.run):
        rows = evaluate_run(WarpRun.from_dir(run))
        print(format_table(rows))
        print(f"written: {run}/eval.json, {run}/eval.md")
    return 0


def _warp_apply_delta(args: argparse.Namespace) -> int:
    from .errors import RunDirectoryError
    from .warp.delta import apply_delta
    from .warp.study import WarpRun

    run = WarpRun.from_dir(args.run, use_cpu=True)
    deltas = sorted(p.parent.name for p in run.layout.root.glob("*/delta.safetensors"))
    if args.phase not in deltas:
        raise RunDirectoryError(
            f"{run.layout.delta(args.phase)} not found: {args.run} holds the deltas of "
            f"{', '.join(deltas) or 'nothing'}"
        )
    model = run.load_model(None)
    for phase in ["phase2"] if args.phase == "phase2" else ["phase2", args.phase]:
        apply_delta(model, run.layout.delta(phase))
    model.save_pretrained(args.out)
    run.tokenizer.save_pretrained(args.out)
    print(f"{args.out}: the base model with the {args.phase} delta applied")
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
        saved = json.loads((run / "stats.json").read_text()) if (run / "stats.json").is_file() else {}
        chosen = {  # an option not given keeps the run's own choice
            "top_k": args.top_k if args.top_k is not None else saved.get("top_k"),
            "metric": args.metric or saved.get("importance_metric", "loss"),
            "cases_by": args.cases_by or saved.get("cases_by", "Urel"),
            "bootstrap_samples": args.bootstrap_samples
            if args.bootstrap_samples is not None
            else saved.get("bootstrap_samples", 1000),
        }
        stats = aggregate(run, thresholds=thresholds, **chosen)
        print(
            f"{run}: I_pre ({chosen['metric']}) vs Urel rho {stats['I_pre_vs_Urel']['spearman_rho']:.3f} "
            f"(p {stats['I_pre_vs_Urel']['p_value']:.3g}), I_pre vs "
            f"G_pre rho {stats['I_pre_vs_G_pre']['spearman_rho']:.3f}, "
            f"cases by {chosen['cases_by']} {stats['cases']}"
        )
    if len(runs) > 1:
        aggregate_seeds(root, runs, bootstrap_samples=chosen["bootstrap_samples"])
        print(f"{root}: heads_across_seeds.csv, stats_across_seeds.json")
    return 0


def _heads_prune_curve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import parse_config
    from .heads.study import HEAD_STUDY_ARGUMENT_TYPES, prune_saved_model

    out = Path(args.out) if args.out else Path(args.model) / "prune_curve.json"
    record = prune_saved_model(
        args.model, *parse_config(HEAD_STUDY_ARGUMENT_TYPES, [args.config, *args.overrides]), out
    )
    for name, rows in record["curves"].items():
        shown = ", ".join(f"{100 * r['share_removed']:.0f}%: {r['accuracy']:.3f}" for r in rows)
        print(f"{name}: accuracy at heads removed {shown}")
    print(out)
    return 0


def _heads_plot(args: argparse.Namespace) -> int:
    from .heads.analysis import plot

    for run in _heads_runs(args.run)[1]:
        for path in plot(run):
            print(path)
    return 0


def _drift_inputs(args: argparse.Namespace):
    from .models import load_with_adapter
    from .texts import load_texts, text_batches

    model, tokenizer = load_with_adapter(
        args.model, args.adapter, args.task_type, args.num_labels, allow_pickle_weights=args.allow_pickle_weights
    )
    ids, texts = load_texts(args.data, split=args.split, column=args.text_column, limit=args.max_examples)
    return model, ids, text_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_seq_length)


def _drift_dump(args: argparse.Namespace) -> int:
    from .drift.shards import dump_representations

    if args.adapter_off and not args.adapter:
        raise ValueError("--adapter-off dumps the base representations of an adapter: pass --adapter too")
    model, ids, batches = _drift_inputs(args)
    out = dump_representations(
        model,
        batches,
        args.out,
        example_ids=ids,
        pooling=args.pooling,
        layers=args.layers,
        dtype=args.dtype,
        model_name=args.model,
        adapter=args.adapter,
        disable_adapter=args.adapter_off,
        overwrite=args.overwrite,
    )
    print(f"{out}: {len(ids)} examples, {len(batches)} shards")
    return 0


def _integer_at_least(low: int, name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {name} integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a {name} integer, got {value}")
        return value

    return parse


_positive_int = _integer_at_least(1, "positive")
_non_negative_int = _integer_at_least(0, "non-negative")


def _check_new_file(path: str | None, option: str = "--json") -> None:
    """``option`` names a file to create: an existing file or a directory is refused before any work."""
    from pathlib import Path

    if path and Path(path).exists():
        raise FileExistsError(f"{option} {path} already exists; name a new file (nothing was overwritten)")


def _print_drift(results, out: str | None) -> None:
    from .drift.measure import drift_table
    from .io import write_json

    print(drift_table(results))
    if out:
        write_json(out, {str(layer): r.to_dict() for layer, r in results.items()})
        print(f"written: {out}")


def _drift_measure(args: argparse.Namespace) -> int:
    from .drift.measure import measure_drift

    if args.base is None and not args.adapter:
        raise ValueError("measure needs --adapter (base = adapter disabled) or --base DUMP (a dump of the base model)")
    _check_new_file(args.json)
    model, _, batches = _drift_inputs(args)
    results = measure_drift(model, batches, base=args.base, pooling=args.pooling, layers=args.layers, progress=True)
    _print_drift(results, args.json)
    return 0


def _drift_compare(args: argparse.Namespace) -> int:
    from .drift.measure import compare_dumps
    from .targets import parse_int_set

    _check_new_file(args.json)
    layers = None if args.layers is None else parse_int_set(args.layers)
    _print_drift(compare_dumps(args.base, args.other, pooling=args.pooling, layers=layers), args.json)
    return 0


def _drift_analyze(args: argparse.Namespace) -> int:
    from .drift.analysis import analyze_run, format_summary

    print(format_summary(analyze_run(args.run)))
    print(f"written: {args.run}/drift.csv, {args.run}/drift.json")
    return 0


def _drift_plot(args: argparse.Namespace) -> int:
    from .drift.analysis import plot

    for path in plot(args.run):
        print(path)
    return 0


def _add_drift_parser(commands) -> None:
    from .drift.recorders import POOLINGS
    from .drift.shards import DTYPES

    drift = commands.add_parser("drift", help="representation dumps and drift (CKA, cosine) from a base model")
    actions = drift.add_subparsers(dest="action", required=True)
    dump = actions.add_parser("dump", help="write a model's per-layer hidden states to safetensors shards")
    measure = actions.add_parser(
        "measure", help="per-layer drift of a model from its base: adapter on/off, or against a base dump"
    )
    for parser in (dump, measure):
        parser.add_argument("--model", required=True, help="embedded:minilm, tiny:<arch>, a hub id or a directory")
        parser.add_argument("--adapter", default=None, help="a saved peft adapter directory to load on the model")
        _allow_pickle_weights(parser)
        parser.add_argument(
            "--data", required=True, help="builtin:<task> or a .jsonl/.json/.csv file with a text column"
        )
        parser.add_argument("--split", default="validation", help="split of a builtin task (default validation)")
        parser.add_argument("--text-column", default="text", help="column holding the text (default text)")
        parser.add_argument("--max-examples", type=_positive_int, default=None, help="use the first N examples")
        parser.add_argument(
            "--max-seq-length", type=_positive_int, default=128, help="truncate to N tokens (default 128)"
        )
        parser.add_argument("--batch-size", type=_positive_int, default=32, help="examples per batch and per shard")
        parser.add_argument("--layers", default=None, help="hidden states, e.g. '0-6' (0 = embeddings); default all")
        parser.add_argument("--task-type", default="seq_cls", choices=["seq_cls", "causal_lm"])
        parser.add_argument(
            "--num-labels", type=_positive_int, default=None, help="classifier size if the config lacks it"
        )
    dump.add_argument("--pooling", default="tokens", choices=POOLINGS, help="rows per example (default tokens)")
    dump.add_argument("--dtype", default="float16", choices=list(DTYPES), help="dtype on disk (default float16)")
    dump.add_argument("--out", required=True, help="dump directory (an unfinished dump there is resumed)")
    dump.add_argument("--adapter-off", action="store_true", help="dump the base: the model with its adapter disabled")
    dump.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the dump in --out (a complete one, or an unfinished one made with other settings)",
    )
    dump.set_defaults(run_command=_drift_dump)
    measure.add_argument(
        "--base", default=None, help="dump of the base model (default with --adapter: the model with it disabled)"
    )
    measure.add_argument("--pooling", default="mean", choices=POOLINGS, help="rows compared (default mean)")
    measure.add_argument("--json", default=None, help="also write the results to this JSON file")
    measure.set_defaults(run_command=_drift_measure)
    compare = actions.add_parser("compare", help="per-layer drift between two dumps of the same examples")
    compare.add_argument("base", help="dump of the base model")
    compare.add_argument("other", help="dump of the fine-tuned model")
    compare.add_argument("--pooling", default=None, choices=POOLINGS, help="read both as (default: as dumped)")
    compare.add_argument("--layers", default=None, help="compare only these layers, e.g. '0-2' (both must hold them)")
    compare.add_argument("--json", default=None, help="also write the results to this JSON file")
    compare.set_defaults(run_command=_drift_compare)
    for name, function, text in (
        ("analyze", _drift_analyze, "redo drift.csv and drift.json of a recipes/drift.py run from its dumps"),
        ("plot", _drift_plot, "redo drift.png of a recipes/drift.py run"),
    ):
        parser = actions.add_parser(name, help=text)
        parser.add_argument("--run", required=True, help="the study's output_dir")
        parser.set_defaults(run_command=function)


def _lora_null_verify(args: argparse.Namespace) -> int:
    from .lora_null.verify import format_verification, read_init, save_verification, verify_adapter
    from .models import load_with_adapter
    from .texts import load_texts, text_batches

    _check_new_file(args.save_stats, "--save-stats")
    model, tokenizer = load_with_adapter(
        args.model, args.adapter, args.task_type, args.num_labels, allow_pickle_weights=args.allow_pickle_weights
    )
    _, texts = load_texts(args.data, split=args.split, column=args.text_column, limit=args.max_examples)
    batches = text_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_seq_length)
    init = read_init(args.adapter)
    result = verify_adapter(
        model, batches, max_activation_samples=args.max_activation_samples, init=init, progress=True
    )
    if init and init.get("converted"):
        print(
            "note: this adapter is a null_projection adapter saved as a standard rank-2r LoRA for the original base "
            "(A' = [A; A0]): null_ratio measures that combined row space, not the trained A; the run's "
            "verify_trained.json has the null-space numbers"
        )
    print(format_verification(result))
    if args.save_stats:
        save_verification(result, args.save_stats)
        print(f"written: {args.save_stats}")
    return 0


def _lora_null_compare(args: argparse.Namespace) -> int:
    from .lora_null.verify import format_comparison, load_verification

    print(format_comparison(load_verification(args.initial), load_verification(args.trained)))
    return 0


def _add_lora_null_parser(commands) -> None:
    group = commands.add_parser("lora-null", help="verify LoRA-Null adapters").add_subparsers(
        dest="action", required=True
    )
    verify = group.add_parser("verify", help="per-layer null-space, effect and contribution metrics of an adapter")
    verify.add_argument(
        "--model", required=True, help="the base model: embedded:minilm, tiny:<arch>, hub id, directory"
    )
    verify.add_argument("--adapter", required=True, help="the saved peft adapter directory")
    _allow_pickle_weights(verify)
    verify.add_argument("--data", required=True, help="builtin:<task> or a .jsonl/.json/.csv file with a text column")
    verify.add_argument("--split", default="validation", help="split of a builtin task (default validation)")
    verify.add_argument("--text-column", default="text", help="column holding the text (default text)")
    verify.add_argument("--max-examples", type=_positive_int, default=256, help="use the first N examples (256)")
    verify.add_argument("--max-seq-length", type=_positive_int, default=128, help="truncate to N tokens (128)")
    verify.add_argument("--batch-size", type=_positive_int, default=32, help="examples per batch (32)")
    verify.add_argument(
        "--max-activation-samples", type=_positive_int, default=4096, help="input rows per layer at most (4096)"
    )
    verify.add_argument("--task-type", default="seq_cls", choices=["seq_cls", "causal_lm"])
    verify.add_argument(
        "--num-labels", type=_positive_int, default=None, help="classifier size if the config lacks it"
    )
    verify.add_argument("--save-stats", default=None, help="also write the results to this (new) JSON file")
    verify.set_defaults(run_command=_lora_null_verify)
    compare = group.add_parser("compare", help="init vs trained: the means of two verification files side by side")
    compare.add_argument("initial", help="verification JSON at init (verify_init.json, or verify --save-stats)")
    compare.add_argument("trained", help="verification JSON after training")
    compare.set_defaults(run_command=_lora_null_compare)


def _selective_inspect(args: argparse.Namespace) -> int:
    from .config import parse_config
    from .selective.study import SEQ_CLS_ARGUMENT_TYPES, format_inspection, inspect_config

    report, selection = inspect_config(*parse_config(SEQ_CLS_ARGUMENT_TYPES, [args.config, *args.overrides]))
    print(format_inspection(report, selection))
    return 0


def _add_selective_parser(commands) -> None:
    group = commands.add_parser("selective", help="selective-layer training (recipes/seq_cls.py)").add_subparsers(
        dest="action", required=True
    )
    inspect = group.add_parser(
        "inspect",
        help="for one training batch of a seq_cls config: trainable parameters, autograd nodes and bytes saved "
        "for backward, per block",
    )
    inspect.add_argument("config", help="a seq_cls recipe config (.json)")
    inspect.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, as for the recipe")
    inspect.set_defaults(run_command=_selective_inspect)


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
    _allow_pickle_weights(targets)
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
    apply = warp.add_parser(
        "apply-delta", help="rebuild a phase's full model from the base model and the run's delta files"
    )
    apply.add_argument("--run", required=True, help="the run's output_dir")
    apply.add_argument(
        "--phase", required=True, help="phase2, or an arm: phase3, phase3_random, plain, full_lr1e-05, ..."
    )
    apply.add_argument("--out", required=True, help="directory for the full model (save_pretrained)")
    apply.set_defaults(run_command=_warp_apply_delta)

    heads = commands.add_parser(
        "heads", help="redo the head-plasticity analysis from saved files; pruning curves of saved models"
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
        type=_non_negative_int,
        default=None,
        help="resamplings for the 95%% intervals (default: the run's own, else 1000; 0: none)",
    )
    aggregate.set_defaults(run_command=_heads_aggregate)
    prune = heads.add_parser(
        "prune-curve", help="iterative pruning curve of a saved model on a head-plasticity run's evaluation subset"
    )
    prune.add_argument("config", help="the head-plasticity config of the run (.json)")
    prune.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. prune_step=0.05")
    prune.add_argument("--model", required=True, help="a saved model, e.g. <output_dir>/seed-42/final")
    prune.add_argument("--out", default=None, help="JSON to write (default: <model>/prune_curve.json; figure beside)")
    prune.set_defaults(run_command=_heads_prune_curve)
    plot = heads.add_parser("plot", help="scatter, statistics and heatmap figures as PNG files")
    plot.add_argument("--run", required=True, help="a seed directory, or the output_dir holding seed-* directories")
    plot.set_defaults(run_command=_heads_plot)
    _add_drift_parser(commands)
    _add_lora_null_parser(commands)
    _add_selective_parser(commands)
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
