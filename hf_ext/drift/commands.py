"""``hf-ext drift``: representation dumps and drift (CKA, cosine) of a model against its base."""

from __future__ import annotations

import argparse

from ..cli import allow_pickle_weights_option, check_new_file, positive_int


def _drift_inputs(args: argparse.Namespace):
    from ..models import load_with_adapter
    from ..texts import load_texts, text_batches

    model, tokenizer = load_with_adapter(
        args.model, args.adapter, args.task_type, args.num_labels, allow_pickle_weights=args.allow_pickle_weights
    )
    ids, texts = load_texts(args.data, split=args.split, column=args.text_column, limit=args.max_examples)
    return model, ids, text_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_seq_length)


def _drift_dump(args: argparse.Namespace) -> int:
    from .shards import dump_representations

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


def _print_drift(results, out: str | None) -> None:
    from ..io import write_json
    from .measure import drift_table

    print(drift_table(results))
    if out:
        write_json(out, {str(layer): r.to_dict() for layer, r in results.items()})
        print(f"written: {out}")


def _drift_measure(args: argparse.Namespace) -> int:
    from .measure import measure_drift

    if args.base is None and not args.adapter:
        raise ValueError("measure needs --adapter (base = adapter disabled) or --base DUMP (a dump of the base model)")
    check_new_file(args.json)
    model, _, batches = _drift_inputs(args)
    results = measure_drift(model, batches, base=args.base, pooling=args.pooling, layers=args.layers, progress=True)
    _print_drift(results, args.json)
    return 0


def _drift_compare(args: argparse.Namespace) -> int:
    from ..targets import parse_int_set
    from .measure import compare_dumps

    check_new_file(args.json)
    layers = None if args.layers is None else parse_int_set(args.layers)
    _print_drift(compare_dumps(args.base, args.other, pooling=args.pooling, layers=layers), args.json)
    return 0


def _drift_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze_run, format_summary

    print(format_summary(analyze_run(args.run)))
    print(f"written: {args.run}/drift.csv, {args.run}/drift.json")
    return 0


def _drift_plot(args: argparse.Namespace) -> int:
    from .analysis import plot

    for path in plot(args.run):
        print(path)
    return 0


def add_parser(commands, name: str, help: str) -> None:
    """Add ``hf-ext drift`` and its actions to the ``commands`` subparsers."""
    from .recorders import POOLINGS
    from .shards import DTYPES

    drift = commands.add_parser(name, help=help)
    actions = drift.add_subparsers(dest="action", required=True)
    dump = actions.add_parser("dump", help="write a model's per-layer hidden states to safetensors shards")
    measure = actions.add_parser(
        "measure", help="per-layer drift of a model from its base: adapter on/off, or against a base dump"
    )
    for parser in (dump, measure):
        parser.add_argument("--model", required=True, help="embedded:minilm, tiny:<arch>, a hub id or a directory")
        parser.add_argument("--adapter", default=None, help="a saved peft adapter directory to load on the model")
        allow_pickle_weights_option(parser)
        parser.add_argument(
            "--data",
            required=True,
            help="builtin:<task>, corpus:<name> or a .jsonl/.json/.csv file with a text column",
        )
        parser.add_argument(
            "--split", default="validation", help="split of a builtin task or corpus (default validation)"
        )
        parser.add_argument("--text-column", default="text", help="column holding the text (default text)")
        parser.add_argument("--max-examples", type=positive_int, default=None, help="use the first N examples")
        parser.add_argument(
            "--max-seq-length", type=positive_int, default=128, help="truncate to N tokens (default 128)"
        )
        parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per batch and per shard")
        parser.add_argument("--layers", default=None, help="hidden states, e.g. '0-6' (0 = embeddings); default all")
        parser.add_argument("--task-type", default="seq_cls", choices=["seq_cls", "causal_lm"])
        parser.add_argument(
            "--num-labels", type=positive_int, default=None, help="classifier size if the config lacks it"
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
