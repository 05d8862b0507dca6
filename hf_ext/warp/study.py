"""The three-phase WaRP study: learn safety in a rotated basis, then fine-tune for utility without
moving the coefficients that mattered for safety.

1. basis: eigenbasis of each target layer's inputs over the basis data (the safety data by default);
2. safety fine-tune of the coefficients ``C = W @ U`` while accumulating their gradient importance,
   then masks freezing the ``keep_ratio`` most important share, and the model merged back;
3. utility fine-tune from the phase-2 model with the masks (``phase: 3``), or without masks and
   without reparameterization as the baseline (``phase: "plain"``, same data, steps and lr);
then held-out scores of the three models (``phase: "eval"``). ``phase: "all"`` runs everything.
The files of a run are listed in :mod:`hf_ext.warp.layout`; the run is :mod:`hf_ext.warp.run`, the phases
:mod:`hf_ext.warp.phases`, the held-out scores :mod:`hf_ext.warp.evaluation`; this module runs the
configured phases for every seed and prints the summary.
"""

from __future__ import annotations

import shutil

from .. import distributed
from ..io import write_json
from .evaluation import _held_out, evaluate_run, utility_chance
from .phases import run_arm, run_phase1, run_phase2
from .plan import LAUNCHER_CHECK
from .run import WarpRun, phase_steps
from .summary import format_summary, plot_frontier, plot_safety_vs_utility, summarize


def _remove_stale_results(run: WarpRun, *, after: str) -> None:
    """Rerunning a phase (``overwrite_output_dir``) invalidates what later phases computed from it: remove them,
    and say so, rather than leave results that no longer belong to this run. The arms do not depend on
    each other."""
    order = phase_steps(run.warp_args, run.training_args.learning_rate, "all")
    later = order[order.index(after) + 1 :] if after in ("phase1", "phase2") else []
    stale = [run.layout.phase_dir(p) for p in later if run.layout.phase_dir(p).exists()]
    stale += [path for path in (run.layout.eval_json, run.layout.eval_md, run.layout.figure) if path.exists()]
    if (
        not stale
        or not run.layout.metadata(after).exists()
        or not getattr(run.training_args, "overwrite_output_dir", False)
    ):
        return
    if distributed.is_main_process():
        print(f"rerunning {after}: removing results computed from it: {', '.join(p.name for p in stale)}", flush=True)
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    distributed.barrier()


def _run_step(run: WarpRun, step: str) -> None:
    if step == "phase1":
        run_phase1(run)
    elif step == "phase2":
        run_phase2(run)
    else:
        run_arm(run, next(arm for arm in run.arms if arm.name == step))


def _share_phase1(first: WarpRun, run: WarpRun) -> None:
    """Phase 1 depends on the data and the base model only, not the seed: later seeds get the first one's."""
    if distributed.is_main_process():
        target = run.layout.phase_dir("phase1")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(first.layout.phase_dir("phase1"), target)
    distributed.barrier()


def _run_seed(run: WarpRun, *, first: WarpRun | None = None) -> dict | None:
    for step in phase_steps(run.warp_args, run.training_args.learning_rate):
        _remove_stale_results(run, after=step)
        if step == "phase1" and first is not None:
            _share_phase1(first, run)
        else:
            _run_step(run, step)
        run.save_config()
    if run.warp_args.phase not in ("eval", "all"):
        return None
    rows = evaluate_run(run) if distributed.is_main_process() else None
    distributed.barrier()
    return rows


def run_warp_study(run: WarpRun) -> dict | None:
    """Run the configured phase(s) for every seed; 'all' runs 1, 2, the arms and eval, and prints the table
    of every arm (mean and 95% interval over seeds) and writes the safety-vs-utility figure.

    ``config.json`` is written after each phase that succeeds, never by a failed invocation.
    """
    distributed.check_launcher(run.training_args, *LAUNCHER_CHECK)
    seeds = run.seed_runs()
    rows_by_seed = {}
    for index, seed_run in enumerate(seeds):
        rows = _run_seed(seed_run, first=seeds[0] if index else None)
        if rows is not None:
            rows_by_seed[seed_run.training_args.seed] = rows
    if not rows_by_seed:
        return None
    return report_study(run, rows_by_seed)


def report_study(run: WarpRun, rows_by_seed: dict[int, dict]) -> dict:
    """The summary over seeds of ``rows_by_seed`` (:mod:`hf_ext.warp.summary`): written to ``eval.json`` and
    ``eval.md`` in the run's root with several seeds, the figures saved, the table and verdicts printed."""
    sizes = {task: len(_held_out(run.data(task))) for task in ("safety", "utility")}
    summary = summarize(rows_by_seed, sizes, run.arms, chance=utility_chance(run))
    if len(rows_by_seed) > 1:
        write_json(run.layout.eval_json, summary)
        run.layout.eval_md.write_text(format_summary(summary) + "\n", encoding="utf-8")
    figure = plot_safety_vs_utility(summary, run.layout.figure)
    frontier = plot_frontier(summary, run.arms, run.layout.frontier_figure) if len(rows_by_seed) > 1 else None
    # a summary over copied eval.json files has neither the phases' files to verify nor event files
    trained = next(run.dir.rglob("phase1/basis.safetensors"), None) is not None
    logged = next(run.dir.rglob("events.out.tfevents*"), None) is not None
    print(
        f"\nWaRP on {run.model_args.model_name_or_path}: held-out scores\n\n{format_summary(summary)}\n\n"
        f"run directory: {run.dir.resolve()}"
        + (f"  (check it: hf-ext warp verify --run {run.dir})" if trained else "")
        + (f"\nfigure:        {figure.resolve()}" if figure else "")
        + (f"\nfrontier:      {frontier.resolve()}" if frontier else "")
        + (
            f"\ntensorboard:   tensorboard --logdir {run.dir.resolve()}  (one run per phase and arm)" if logged else ""
        ),
        flush=True,
    )
    return summary
