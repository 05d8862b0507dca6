"""The head-plasticity study: are the heads that matter for a task the heads that fine-tuning changes?

Per seed (``output_dir/seed-<s>/``): record the settings that decide the model fine-tuning starts from
(``study.json``), fit a linear probe of the task head (``probe.json``), measure head importance through it on a
fixed evaluation subset by ablation (``I_pre.jsonl``), by gradient/Fisher (``G_pre.jsonl``) and the attention
entropy (``entropy.jsonl``), saving the per-example values beside them (``*_examples.safetensors``, for the
bootstrap); save the initial model (by default with the probed head: LP-FT), fine-tune the whole model, save
the final model, measure ablation importance again (``I_post.jsonl``), the pruning curves (heads ranked on the
evaluation subset, curves evaluated on held-out examples: ``prune_curve.json``) and the per-head update size
(``U.jsonl``), then aggregate (``heads.csv``, ``stats.json``, ``cases.json``), draw the figures and print a
summary. With several seeds, ``output_dir`` also gets ``heads_across_seeds.csv`` and ``stats_across_seeds.json``.
The subset is saved once as ``output_dir/eval_subset.json``."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader
from transformers import TrainingArguments

from .. import distributed
from ..config import DataArguments, HfExtTrainingArguments, ModelArguments, given_keys
from ..data import eval_subset, example_hashes, load_model_and_data, prepare_data
from ..errors import ConfigError, RunDirectoryError
from ..io import read_json, save_tensors, write_json
from ..models import load_with_adapter
from ..outputs import changed_settings, check_output_dir
from ..plotting import plotting_available, save_figures
from ..probe import fit_probe, head_state, reinitialise_head, restore_head, task_head
from ..run_logger import RunLogger, print_run_locations
from ..stats import majority_share
from ..targets import find_attention
from ..trainer import HfExtTrainer
from .analysis import (
    CHANCE_FILE,
    CURVE_SUFFIXES,
    SETTINGS_FILE,
    aggregate,
    aggregate_seeds,
    check_top_k,
    curve_name,
    figures,
    plot,
    prune_curve_figure,
    summary,
    top_k_overlap,
    write_jsonl,
)
from .callbacks import HeadImportanceCallback
from .config import HeadStudyArguments
from .entropy import attention_entropy
from .gates import HeadGates, head_update_sizes, mean_head_outputs
from .importance import AblationResult, ablation_importance, gradient_importance
from .pruning import prune_curve

logger = logging.getLogger(__name__)

HEAD_STUDY_ARGUMENT_TYPES = (ModelArguments, DataArguments, HeadStudyArguments, HfExtTrainingArguments)


def mixed_precision() -> dict[str, bool]:
    """bf16 where the GPU supports it, else fp16 on CUDA, else full precision."""
    if not torch.cuda.is_available():
        return {"bf16": False, "fp16": False}
    return {"bf16": True, "fp16": False} if torch.cuda.is_bf16_supported() else {"bf16": False, "fp16": True}


def choose_precision(training_args: TrainingArguments) -> dict[str, bool]:
    """The config's ``bf16``/``fp16`` when it sets either, else :func:`mixed_precision`; says which on stdout."""
    if {"bf16", "fp16"} & given_keys(training_args) or training_args.bf16 or training_args.fp16:
        chosen, how = {"bf16": training_args.bf16, "fp16": training_args.fp16}, "as configured"
    else:
        chosen, how = mixed_precision(), "chosen automatically; set bf16 or fp16 in the config to choose"
    if distributed.is_main_process():
        name = "bf16" if chosen["bf16"] else "fp16" if chosen["fp16"] else "fp32 (no mixed precision)"
        print(f"head study: {name} ({how})", flush=True)
    return chosen


def _baseline(model, shard: list, study: HeadStudyArguments):
    """What an ablated head outputs: None (zero) or its mean over the whole subset (every rank calls this)."""
    return mean_head_outputs(model, shard, all_ranks=True) if study.ablation == "mean" else None


def _measure_ablation(model, shard: list, study: HeadStudyArguments, path: Path | None) -> AblationResult:
    """Ablation importance over every rank's shard (each rank measures its own); ``path``: where the main
    process writes the per-head JSONL (and the per-example values beside it), None to write nothing. Under DDP
    the per-example values are in rank order (every file of a run in the same order)."""
    main = distributed.is_main_process()
    baseline = _baseline(model, shard, study)
    result = ablation_importance(model, shard, baseline=baseline, progress=main).gathered()
    if main and path is not None:
        write_jsonl(
            path, {"loss_increase": result.loss_increase.numpy(), "accuracy_drop": result.accuracy_drop.numpy()}
        )
        save_tensors(
            path.with_name(f"{path.stem}_examples.safetensors"),
            {
                "example_loss": result.example_loss,
                "example_accuracy": result.example_accuracy,
                "base_example_loss": result.base_example_loss,
                "base_example_accuracy": result.base_example_accuracy,
            },
            {"ablation": study.ablation},
        )
    return result


def _measure_gradients_and_entropy(model, shard: list, study: HeadStudyArguments, run: Path) -> None:
    """G_pre and F_pre (the gate gradient towards the ablation's baseline) and the attention entropy."""
    main = distributed.is_main_process()
    gradients = gradient_importance(model, shard, baseline=_baseline(model, shard, study), progress=main).gathered()
    entropy = distributed.gather_examples(attention_entropy(model, shard, progress=main))
    if main:
        write_jsonl(
            run / "G_pre.jsonl",
            {
                "gradient": gradients.gradient.numpy(),
                "fisher": gradients.fisher.numpy(),
                "gradient_layer_normalised": gradients.normalised().numpy(),
            },
        )
        save_tensors(
            run / "G_pre_examples.safetensors",
            {"example_gradient": gradients.example_gradient},
            {"ablation": study.ablation},
        )
        write_jsonl(run / "entropy.jsonl", {"entropy": entropy.double().mean(0).numpy()})
        save_tensors(run / "entropy_examples.safetensors", {"example_entropy": entropy})


def _fit_probe(model, data, study, training_args, batches, seed: int):
    """Every rank fits the same probe (same data and seed: none waits for another); rank 0's head is then
    broadcast, so all ranks measure one model even where kernels are not deterministic."""
    train = DataLoader(data.train, batch_size=training_args.per_device_train_batch_size, collate_fn=data.collator)
    result = fit_probe(model, list(train), batches, epochs=study.probe_epochs, learning_rate=study.probe_lr, seed=seed)
    for module in task_head(model).values():
        for parameter in module.parameters():
            distributed.broadcast_(parameter.data, src=0)
    return result


def _probe(model, task_type, data, study, training_args, batches, run: Path, seed: int) -> dict | None:
    """Fit the task head alone before the measurements (``probe_before_importance``); the head states by
    ``finetune_from`` value (``random_head``, ``probed_head``), or None when there is no probe (a causal LM keeps
    its pretrained LM head)."""
    if not study.probe_before_importance or task_type != "seq_cls":
        return None
    random = head_state(model)
    result = _fit_probe(model, data, study, training_args, batches, seed)
    if distributed.is_main_process():
        write_json(run / "probe.json", {"head_modules": list(task_head(model)), **result.to_json()})
        print(
            f"probe (task head only, {result.trainable_parameters} parameters, {result.steps} steps): accuracy "
            f"{result.accuracy:.3f}, loss {result.loss:.4f} on the evaluation subset",
            flush=True,
        )
    return {"random_head": random, "probed_head": head_state(model)}


def _probe_stability(model, data, study, training_args, batches, shard, reference: AblationResult, run: Path):
    """I_pre through probes from other head initialisations (``probe_seeds``), against the run's own I_pre."""
    if not study.probe_seeds:
        return
    reference = _importance(reference, study.importance_metric)
    k = min(study.top_k, reference.size)
    rows = {}
    for probe_seed in study.probe_seeds:
        reinitialise_head(model, probe_seed)
        result = _fit_probe(model, data, study, training_args, batches, probe_seed)
        other = _importance(_measure_ablation(model, shard, study, None), study.importance_metric)
        rho, p = spearmanr(reference.ravel(), other.ravel())
        rows[str(probe_seed)] = {
            "probe_accuracy": result.accuracy,
            "probe_loss": result.loss,
            "spearman_rho": float(rho),
            "spearman_p": float(p),
            f"top{k}_overlap": top_k_overlap(reference, other, k),
        }
    if distributed.is_main_process():
        record = read_json(run / "probe.json")
        record["stability"] = {"top_k": k, "chance_overlap": k / reference.size, "probe_seeds": rows}
        write_json(run / "probe.json", record)


def _importance(result: AblationResult, metric: str):
    return (result.loss_increase if metric == "loss" else result.accuracy_drop).numpy()


def _curve_orders(study: HeadStudyArguments) -> dict[str, tuple[str, str, int]]:
    """``{curve name: (order, schedule, seed)}``: the importance order recomputed, ranked once and reversed, and
    the random orders."""
    orders = {curve_name(study.prune_order, schedule): (study.prune_order, schedule, 0) for schedule in CURVE_SUFFIXES}
    return orders | {f"random-{i}": ("random", "recomputed", i) for i in range(study.prune_random_orders)}


def _prune_curves(model, ranking: list, evaluation: list, study: HeadStudyArguments) -> dict:
    """The pruning curves of ``model`` (:func:`_curve_orders`), heads ranked on ``ranking`` and the curves
    evaluated on ``evaluation``, as ``prune_curve.json`` holds them; every rank passes its shards."""
    baseline = _baseline(model, ranking, study)
    curves = {
        name: prune_curve(
            model,
            ranking,
            evaluation,
            order=order,
            schedule=schedule,
            step=study.prune_step,
            baseline=baseline,
            seed=seed,
            all_ranks=True,
            progress=distributed.is_main_process(),
        )
        for name, (order, schedule, seed) in _curve_orders(study).items()
    }
    return {
        "step": study.prune_step,
        "ablation": study.ablation,
        "heads": math.prod(HeadGates(model).shape),
        "curves": {name: [row.to_json() for row in curve] for name, curve in curves.items()},
    }


def _subset_indices(data, study: HeadStudyArguments, training_args: TrainingArguments) -> list[int]:
    """The validation indices of the evaluation subset (``output_dir/eval_subset.json``)."""
    return eval_subset(
        data.validation, study.eval_subset_size, study.subset_seed, Path(training_args.output_dir) / "eval_subset.json"
    )


def _batches(data, split: str, indices: list[int], training_args: TrainingArguments) -> list:
    subset = getattr(data, split).select(indices)
    return list(DataLoader(subset, batch_size=training_args.per_device_eval_batch_size, collate_fn=data.collator))


def _heldout_examples(data, ranking: list[int], size: int, seed: int) -> tuple[str, list[int]]:
    """``(split, indices)`` of the held-out examples the pruning curves are evaluated on: ``size`` examples drawn by
    ``seed`` from the test split of ``data`` where it has one, else from its validation split, leaving out every
    example with the content (tokens and label) of one of the ranking examples (validation indices ``ranking``)."""
    split = "test" if data.test is not None else "validation"
    dataset = getattr(data, split)
    ranked = set(example_hashes(data.validation, ranking))
    candidates = [i for i, h in enumerate(example_hashes(dataset, range(len(dataset)))) if h not in ranked]
    if not candidates:
        raise ConfigError(
            f"no held-out {split} examples for the pruning curves: the evaluation subset holds all of them; lower "
            "eval_subset_size, give a test_file, or set prune_step=0"
        )
    if size > len(candidates):
        logger.warning("%d held-out examples asked for, %d in the %s split; using all", size, len(candidates), split)
    chosen = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:size]
    return split, sorted(candidates[i] for i in chosen.tolist())


def _examples_record(data, split: str, indices: list[int]) -> dict:
    return {"split": split, "indices": indices, "hashes": example_hashes(getattr(data, split), indices)}


def _pruning_examples(data, ranking: list[int], study, training_args) -> tuple[list, dict]:
    """The held-out batches the pruning curves are evaluated on, and the record of the examples that rank the
    heads and those that evaluate the curves (``ranking_examples``, ``evaluation_examples``)."""
    split, indices = _heldout_examples(data, ranking, study.heldout_size, study.subset_seed)
    record = {
        "ranking_examples": _examples_record(data, "validation", ranking),
        "evaluation_examples": _examples_record(data, split, indices),
    }
    return _batches(data, split, indices, training_args), record


def prune_saved_model(
    model_dir: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    study: HeadStudyArguments,
    training_args: TrainingArguments,
    out: Path,
) -> dict:
    """The pruning curves of a saved model (e.g. a seed's ``initial`` or ``final``), heads ranked on the evaluation
    subset of the study the config describes (its ``output_dir/eval_subset.json``, checked by content) and the
    curves evaluated on its held-out examples; writes ``out`` (JSON) and, with matplotlib, the figure beside it
    (``.png``)."""
    if distributed.world_size() > 1:
        raise ConfigError("hf-ext heads prune-curve runs in one process; start it without torchrun")
    if not study.prune_step:
        raise ConfigError("the config has prune_step=0 (no curve); pass prune_step=0.1 (or another share) after it")
    if not (Path(training_args.output_dir) / "eval_subset.json").is_file():
        raise RunDirectoryError(
            f"{training_args.output_dir}/eval_subset.json not found: the curve is measured on the study's evaluation "
            "subset; point the config (or output_dir=...) at a finished head-plasticity run"
        )
    model, tokenizer = load_with_adapter(
        model_dir, None, model_args.task_type, None, allow_pickle_weights=model_args.allow_pickle_weights
    )
    data = prepare_data(data_args, tokenizer, model_args.task_type)
    ranking = _subset_indices(data, study, training_args)
    heldout, examples = _pruning_examples(data, ranking, study, training_args)
    batches = _batches(data, "validation", ranking, training_args)
    record = _prune_curves(model.to(training_args.device), batches, heldout, study) | examples
    write_json(out, record | {"model": str(model_dir)})
    if plotting_available("the pruning-curve figure"):
        save_figures({out.stem: prune_curve_figure(record)}, out.parent)
    return record


def _check_same_start(runs: list[Path], settings: dict) -> None:
    """Refuse seed directories whose ``study.json`` records another starting point of fine-tuning than
    ``settings`` (``finetune_from``, the probe's settings): a resumed run would mix the two."""
    for run in runs:
        path = run / SETTINGS_FILE
        changed = changed_settings(read_json(path), settings) if path.is_file() else ""
        if changed:
            raise RunDirectoryError(
                f"{run} holds a head study made with {changed}; resume it with those settings, use another "
                "output_dir, or overwrite_output_dir=true to start over"
            )


def _analyse(run: Path, trainer, study: HeadStudyArguments) -> None:
    """The main process's analysis of a finished seed: tables, statistics, figures, TensorBoard, the summary."""
    stats = aggregate(
        run,
        top_k=study.top_k,
        thresholds=study.thresholds,
        metric=study.importance_metric,
        cases_by=study.cases_by,
        bootstrap_samples=study.bootstrap_samples,
    )
    logger = RunLogger(trainer)
    if plotting_available("head-study figures"):
        plot(run)
        for name, figure in figures(run).items():
            logger.figure(f"heads/{name}", figure)
    logger.scalars(
        {
            "heads/I_pre_vs_Urel_spearman_rho": stats["I_pre_vs_Urel"]["spearman_rho"],
            "heads/I_pre_vs_G_pre_spearman_rho": stats["I_pre_vs_G_pre"]["spearman_rho"],
        },
        now=True,
    )
    logger.close()
    print(f"{run}:\n{summary(stats)}", flush=True)


def run_seed(model_args, data_args, study: HeadStudyArguments, training_args: TrainingArguments, seed: int) -> Path:
    """One seed of the study. Under DDP every rank measures its shard of the evaluation batches and the results
    are gathered, so no rank waits in a collective while another measures; only rank 0 writes files."""
    run = Path(training_args.output_dir) / f"seed-{seed}"
    tokenizer, data, model = load_model_and_data(model_args, data_args, seed=seed)
    model = model.to(training_args.device)
    check_top_k(study.top_k, math.prod(HeadGates(model).shape))  # before any measurement or training
    ranking = _subset_indices(data, study, training_args)
    batches = _batches(data, "validation", ranking, training_args)
    pruning = _pruning_examples(data, ranking, study, training_args) if study.prune_step else None
    shard = distributed.shard(batches)
    main = distributed.is_main_process()
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / SETTINGS_FILE, study.start_settings(model_args.task_type))
        subset = data.validation.select(ranking)
        if model_args.task_type == "seq_cls" and "labels" in subset.column_names:
            write_json(run / CHANCE_FILE, {"majority_class_accuracy": majority_share(subset["labels"])})
    heads = _probe(model, model_args.task_type, data, study, training_args, batches, run, seed)
    i_pre = _measure_ablation(model, shard, study, run / "I_pre.jsonl")
    _measure_gradients_and_entropy(model, shard, study, run)
    if heads is not None:
        _probe_stability(model, data, study, training_args, batches, shard, i_pre, run)
        restore_head(model, heads[study.finetune_from])  # the head I_pre was measured through (LP-FT), or random
    if main:
        model.save_pretrained(run / "initial")
        tokenizer.save_pretrained(run / "initial")
    # Only the main process measures the update size, so only it keeps the initial weights.
    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if main else None
    args = dataclasses.replace(training_args, output_dir=str(run), seed=seed, **choose_precision(training_args))
    callbacks = (
        [HeadImportanceCallback(batches[:1], every=study.log_head_importance_steps)]
        if study.log_head_importance_steps
        else []
    )
    trainer = HfExtTrainer(
        model=model, args=args, processing_class=tokenizer, callbacks=callbacks, **data.trainer_kwargs()
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(str(run / "final"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    _measure_ablation(model, shard, study, run / "I_post.jsonl")
    curves = (
        None if pruning is None else _prune_curves(model, shard, distributed.shard(pruning[0]), study) | pruning[1]
    )
    if main:
        if curves is not None:
            write_json(run / "prune_curve.json", curves)
        size, relative = head_update_sizes(initial, model.state_dict(), find_attention(model))
        write_jsonl(run / "U.jsonl", {"U": size.numpy(), "Urel": relative.numpy()})
        _analyse(run, trainer, study)
    distributed.barrier()
    print_run_locations(trainer)
    return run


def run_head_study(
    model_args: ModelArguments, data_args: DataArguments, study: HeadStudyArguments, training_args: TrainingArguments
) -> list[Path]:
    """Every seed, then the across-seeds aggregate when there are several. A rerun in the same ``output_dir``
    keeps the seeds whose ``heads.csv`` is written and runs the others; it refuses only when every seed is
    finished (``overwrite_output_dir=true`` redoes them all). With ``resume_from_checkpoint=true`` no seed is
    kept: each continues from its last checkpoint (e.g. to a larger ``max_steps``) and is measured again."""
    # Each rank measures its own shard of the batches through the unwrapped model: sharded weights would hang.
    distributed.check_launcher(training_args, "the head study", "weights")
    seeds = study.seeds or [training_args.seed]
    overwrite = getattr(training_args, "overwrite_output_dir", False)
    root = Path(training_args.output_dir)
    runs = [root / f"seed-{seed}" for seed in seeds]
    resuming = bool(training_args.resume_from_checkpoint)
    finished = {run for run in runs if (run / "heads.csv").is_file()} if not (overwrite or resuming) else set()
    check_output_dir(
        root,
        finished=[run / "heads.csv" for run in runs] if len(finished) == len(runs) else [],
        overwrite=overwrite,
        resuming=resuming,
    )
    if not overwrite:
        _check_same_start(runs, study.start_settings(model_args.task_type))
    for run, seed in zip(runs, seeds):
        if run in finished:
            print(f"head plasticity: {run} is finished, keeping it", flush=True)
        else:
            run_seed(model_args, data_args, study, training_args, seed)
    if len(runs) > 1 and distributed.is_main_process():
        aggregate_seeds(training_args.output_dir, runs, bootstrap_samples=study.bootstrap_samples)
    if distributed.is_main_process():
        print(f"\nhead plasticity: {', '.join(str(r / 'heads.csv') for r in runs)}", flush=True)
    return runs
