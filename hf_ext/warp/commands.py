"""``hf-ext warp``: check, score and rebuild the models of a WaRP run (``recipes/warp.py``)."""

from __future__ import annotations

import argparse


def _warp_seed_dirs(run: str) -> list[str]:
    """The seed-* directories of a WaRP study run with several seeds, else ``[run]``."""
    from pathlib import Path

    root = Path(run)
    seeds = sorted(p for p in root.glob("seed-*") if p.is_dir()) if not (root / "config.json").exists() else []
    return [str(p) for p in seeds] or [run]


def _warp_verify(args: argparse.Namespace) -> int:
    from .verify import format_checks, verify_run

    passed = True
    for run in _warp_seed_dirs(args.run):
        checks = verify_run(run)
        print(f"{run}:\n{format_checks(checks)}" if run != args.run else format_checks(checks))
        passed &= all(c.ok for c in checks)
    return 0 if passed else 1


def _warp_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_run, format_table
    from .run import WarpRun

    for run in _warp_seed_dirs(args.run):
        rows = evaluate_run(WarpRun.from_dir(run))
        print(format_table(rows))
        print(f"written: {run}/eval.json, {run}/eval.md")
    return 0


def _read_seed(seed_dir: str) -> tuple[dict, dict]:
    """A seed's ``config.json`` and ``eval.json``, the latter refused unless ``hf-ext warp eval`` wrote it."""
    from ..errors import RunDirectoryError
    from ..io import read_json
    from .layout import WarpLayout

    layout = WarpLayout(seed_dir)
    for needed in (layout.config, layout.eval_json):
        if not needed.is_file():
            raise RunDirectoryError(f"{needed} not found: finish that seed (phase eval) first")
    rows = read_json(layout.eval_json)
    if not isinstance(rows, dict) or not isinstance(rows.get("phase2"), dict):
        raise RunDirectoryError(
            f"{layout.eval_json} holds no phase-2 scores: not written by hf-ext warp eval "
            f"(rerun it: hf-ext warp eval --run {seed_dir})"
        )
    return read_json(layout.config), rows


def _check_one_study(studied: dict[str, tuple[dict, dict]]) -> None:
    """The seeds of one study: the same arguments but the seed, each seed once."""
    from ..errors import RunDirectoryError

    arguments = {
        seed_dir: {key: value for key, value in config.items() if key not in ("seed", "hf_ext_version")}
        for seed_dir, (config, _) in studied.items()
    }
    first_dir, first = next(iter(arguments.items()))
    if differ := [seed_dir for seed_dir, other in arguments.items() if other != first]:
        raise RunDirectoryError(f"{', '.join(differ)} ran with other arguments than {first_dir}: not one study")
    dir_of_seed = {}
    for seed_dir, (config, _) in studied.items():
        if config["seed"] in dir_of_seed:
            raise RunDirectoryError(f"{seed_dir} and {dir_of_seed[config['seed']]} both ran seed {config['seed']}")
        dir_of_seed[config["seed"]] = seed_dir


def _check_same_arms(studied: dict[str, tuple[dict, dict]], arms: set[str]) -> None:
    """Every seed scored the same arms, all of them in ``arms`` (phase 2 and the arms of the study's config)."""
    from ..errors import RunDirectoryError

    (first_dir, (_, first_rows)), *_ = studied.items()
    for seed_dir, (_, rows) in studied.items():
        if unknown := sorted(set(rows) - arms):
            raise RunDirectoryError(
                f"{seed_dir}/eval.json scores arms its config does not run ({', '.join(unknown)}): "
                f"it comes from another run"
            )
        if differing := sorted(set(rows) ^ set(first_rows)):
            raise RunDirectoryError(
                f"{seed_dir}/eval.json and {first_dir}/eval.json score different arms ({', '.join(differing)}): "
                f"finish both seeds' arms, then rerun hf-ext warp eval on each"
            )


def _warp_summary(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ..errors import RunDirectoryError
    from .run import WarpRun
    from .study import report_study

    if not Path(args.run).is_dir():
        raise RunDirectoryError(f"{args.run} is not a directory: pass the study's output_dir (its seed-* runs)")
    seeds = _warp_seed_dirs(args.run)
    if seeds == [args.run]:
        raise RunDirectoryError(f"{args.run} holds no seed-* directories: the summary is over the seeds of a study")
    studied = {seed_dir: _read_seed(seed_dir) for seed_dir in seeds}
    _check_one_study(studied)
    run = WarpRun.from_dir(seeds[0])
    _check_same_arms(studied, {"phase2", *(arm.name for arm in run.arms)})
    rows = {config["seed"]: rows for config, rows in studied.values()}
    run = dataclasses.replace(run, training_args=dataclasses.replace(run.training_args, output_dir=args.run))
    report_study(run, rows)
    return 0


def _warp_apply_delta(args: argparse.Namespace) -> int:
    from ..errors import RunDirectoryError
    from .delta import apply_delta
    from .run import WarpRun

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


def add_parser(commands, name: str, help: str) -> None:
    """Add ``hf-ext warp`` and its actions to the ``commands`` subparsers."""
    warp = commands.add_parser(name, help=help).add_subparsers(dest="action", required=True)
    verify = warp.add_parser("verify", help="check basis, reconstruction, mask ratio and frozen coefficients")
    verify.add_argument("--run", required=True, help="the run's output_dir")
    verify.set_defaults(run_command=_warp_verify)
    evaluate = warp.add_parser(
        "eval", help="held-out safety retention and utility of the phase-2, phase-3 and plain models"
    )
    evaluate.add_argument("--run", required=True, help="the run's output_dir")
    evaluate.set_defaults(run_command=_warp_eval)
    summary = warp.add_parser(
        "summary", help="the table, paired verdicts and figures over the seeds of a study (from their eval.json)"
    )
    summary.add_argument("--run", required=True, help="the study's output_dir (holding seed-* directories)")
    summary.set_defaults(run_command=_warp_summary)
    apply = warp.add_parser(
        "apply-delta", help="rebuild a phase's full model from the base model and the run's delta files"
    )
    apply.add_argument("--run", required=True, help="the run's output_dir")
    apply.add_argument(
        "--phase", required=True, help="phase2, or an arm: phase3, phase3_random, plain, full_lr1e-05, ..."
    )
    apply.add_argument("--out", required=True, help="directory for the full model (save_pretrained)")
    apply.set_defaults(run_command=_warp_apply_delta)
