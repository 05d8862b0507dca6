"""``hf-ext lora-null``: verify LoRA-Null adapters and compare verifications."""

from __future__ import annotations

import argparse

from ..cli import allow_pickle_weights_option, check_new_file, positive_int


def _lora_null_verify(args: argparse.Namespace) -> int:
    from ..models import load_with_adapter
    from ..texts import load_texts, text_batches
    from .verify import format_verification, read_init, save_verification, verify_adapter

    check_new_file(args.save_stats, "--save-stats")
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
    from .verify import format_comparison, load_verification

    print(format_comparison(load_verification(args.initial), load_verification(args.trained)))
    return 0


def add_parser(commands, name: str, help: str) -> None:
    """Add ``hf-ext lora-null`` and its actions to the ``commands`` subparsers."""
    group = commands.add_parser(name, help=help).add_subparsers(dest="action", required=True)
    verify = group.add_parser("verify", help="per-layer null-space, effect and contribution metrics of an adapter")
    verify.add_argument(
        "--model", required=True, help="the base model: embedded:minilm, tiny:<arch>, hub id, directory"
    )
    verify.add_argument("--adapter", required=True, help="the saved peft adapter directory")
    allow_pickle_weights_option(verify)
    verify.add_argument(
        "--data", required=True, help="builtin:<task>, corpus:<name> or a .jsonl/.json/.csv file with a text column"
    )
    verify.add_argument("--split", default="validation", help="split of a builtin task or corpus (default validation)")
    verify.add_argument("--text-column", default="text", help="column holding the text (default text)")
    verify.add_argument("--max-examples", type=positive_int, default=256, help="use the first N examples (256)")
    verify.add_argument("--max-seq-length", type=positive_int, default=128, help="truncate to N tokens (128)")
    verify.add_argument("--batch-size", type=positive_int, default=32, help="examples per batch (32)")
    verify.add_argument(
        "--max-activation-samples", type=positive_int, default=4096, help="input rows per layer at most (4096)"
    )
    verify.add_argument("--task-type", default="seq_cls", choices=["seq_cls", "causal_lm"])
    verify.add_argument("--num-labels", type=positive_int, default=None, help="classifier size if the config lacks it")
    verify.add_argument("--save-stats", default=None, help="also write the results to this (new) JSON file")
    verify.set_defaults(run_command=_lora_null_verify)
    compare = group.add_parser("compare", help="init vs trained: the means of two verification files side by side")
    compare.add_argument("initial", help="verification JSON at init (verify_init.json, or verify --save-stats)")
    compare.add_argument("trained", help="verification JSON after training")
    compare.set_defaults(run_command=_lora_null_compare)
