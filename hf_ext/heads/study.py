"""The head-plasticity study: are the heads that matter for a task the heads that fine-tuning changes?

Per seed (``output_dir/seed-<s>/``): save the initial model, measure head importance by ablation
(``I_pre.jsonl``) and by gradient/Fisher (``G_pre.jsonl``) on a fixed evaluation subset, fine-tune
the whole model, save the final model, measure ablation importance again (``I_post.jsonl``) and the
per-head update size (``U.jsonl``), then aggregate (``heads.csv``, ``stats.json``, ``cases.json``)
and draw the figures. With several seeds, ``output_dir`` also gets ``heads_across_seeds.csv`` and
``stats_across_seeds.json``. The subset is saved once as ``output_dir/eval_subset.json``.
"""

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
from ..config import DataArguments, ModelArguments, given_keys
from ..data import eval_subset, prepare_data
from ..io import read_json, write_json
from ..models import load_model, load_tokenizer
from ..outputs import check_output_dir
from ..plotting import plotting_available
from ..run_logger import RunLogger, print_run_locations
from ..targets import find_attention
from ..trainer import HfExtTrainer
from .analysis import aggregate, aggregate_seeds, check_top_k, figures, plot, read_jsonl, top_k_overlap, write_jsonl
from .callbacks import HeadImportanceCallback
from .config import HeadStudyArguments
from .gates import HeadGates, head_update_sizes
from .importance import ablation_importance, gradient_importance
from .probe import fit_probe, head_state, reinitialise_head, restore_head, task_head

logger = logging.getLogger(__name__)


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


def _measure_ablation(model, batches, path: Path) -> None:
    result = ablation_importance(model, batches, progress=distributed.is_main_process())
    write_jsonl(path, {"loss_increase": result.loss_increase.numpy(), "accuracy_drop": result.accuracy_drop.numpy()})


def _fit_probe(model, data, study, training_args, batches, seed: int):
    train = DataLoader(data.train, batch_size=training_args.per_device_train_batch_size, collate_fn=data.collator)
    return fit_probe(model, list(train), batches, epochs=study.probe_epochs, learning_rate=study.probe_lr, seed=seed)


def _probe(model, task_type, data, study, training_args, batches, run: Path, seed: int) -> dict | None:
    """Fit the task head alone before the measurements (``probe_before_importance``); ``{"random", "probed"}``
    head states, or None when there is no probe (a causal LM keeps its pretrained LM head)."""
    if not study.probe_before_importance or task_type != "seq_cls":
        return None
    random = head_state(model)
    result = _fit_probe(model, data, study, training_args, batches, seed)
    write_json(run / "probe.json", {"head_modules": list(task_head(model)), **result.to_json()})
    print(
        f"probe (task head only, {result.trainable_parameters} parameters, {result.steps} steps): accuracy "
        f"{result.accuracy:.3f}, loss {result.loss:.4f} on the evaluation subset",
        flush=True,
    )
    return {"random": random, "probed": head_state(model)}


def _probe_stability(model, data, study, training_args, batches, run: Path) -> None:
    """I_pre through probes from other head initialisations (``probe_seeds``), against the run's own I_pre."""
    if not study.probe_seeds:
        return
    reference = read_jsonl(run / "I_pre.jsonl", "loss_increase")
    k = min(study.top_k, reference.size)
    rows = {}
    for probe_seed in study.probe_seeds:
        reinitialise_head(model, probe_seed)
        result = _fit_probe(model, data, study, training_args, batches, probe_seed)
        other = ablation_importance(model, batches, progress=False).loss_increase.numpy()
        rho, p = spearmanr(reference.ravel(), other.ravel())
        rows[str(probe_seed)] = {
            "probe_accuracy": result.accuracy,
            "spearman_rho": float(rho),
            "spearman_p": float(p),
            f"top{k}_overlap": top_k_overlap(reference, other, k),
        }
    record = read_json(run / "probe.json")
    record["stability"] = {"top_k": k, "chance_overlap": k / reference.size, "probe_seeds": rows}
    write_json(run / "probe.json", record)


def run_seed(model_args, data_args, study: HeadStudyArguments, training_args: TrainingArguments, seed: int) -> Path:
    run = Path(training_args.output_dir) / f"seed-{seed}"
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    data = prepare_data(data_args, tokenizer, model_args.task_type)
    model = load_model(model_args, tokenizer, data.labels, seed=seed).to(training_args.device)
    check_top_k(study.top_k, math.prod(HeadGates(model).shape))  # before any measurement or training
    indices = eval_subset(
        data.validation, study.eval_subset_size, study.subset_seed, Path(training_args.output_dir) / "eval_subset.json"
    )
    batches = list(
        DataLoader(
            data.validation.select(indices),
            batch_size=training_args.per_device_eval_batch_size,
            collate_fn=data.collator,
        )
    )
    main = distributed.is_main_process()
    if main:
        run.mkdir(parents=True, exist_ok=True)
        heads = _probe(model, model_args.task_type, data, study, training_args, batches, run, seed)
        _measure_ablation(model, batches, run / "I_pre.jsonl")
        gradients = gradient_importance(model, batches, progress=True)
        write_jsonl(
            run / "G_pre.jsonl",
            {
                "gradient": gradients.gradient.numpy(),
                "fisher": gradients.fisher.numpy(),
                "gradient_layer_normalised": gradients.normalised().numpy(),
            },
        )
        if heads is not None:
            _probe_stability(model, data, study, training_args, batches, run)
            restore_head(model, heads["probed" if study.keep_probe_head else "random"])  # LP-FT, or as without
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
    if main:
        model = trainer.accelerator.unwrap_model(trainer.model)
        _measure_ablation(model, batches, run / "I_post.jsonl")
        size, relative = head_update_sizes(initial, model.state_dict(), find_attention(model))
        write_jsonl(run / "U.jsonl", {"U": size.numpy(), "Urel": relative.numpy()})
        stats = aggregate(run, top_k=study.top_k, thresholds=study.thresholds)
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
    distributed.barrier()
    print_run_locations(trainer)
    return run


def run_head_study(
    model_args: ModelArguments, data_args: DataArguments, study: HeadStudyArguments, training_args: TrainingArguments
) -> list[Path]:
    """Every seed, then the across-seeds aggregate when there are several."""
    seeds = study.seeds or [training_args.seed]
    check_output_dir(
        training_args.output_dir,
        finished=[f"seed-{seed}/heads.csv" for seed in seeds],
        overwrite=getattr(training_args, "overwrite_output_dir", False),
        resuming=bool(training_args.resume_from_checkpoint),
    )
    runs = [run_seed(model_args, data_args, study, training_args, seed) for seed in seeds]
    if len(runs) > 1 and distributed.is_main_process():
        aggregate_seeds(training_args.output_dir, runs)
    if distributed.is_main_process():
        print(f"\nhead plasticity: {', '.join(str(r / 'heads.csv') for r in runs)}", flush=True)
    return runs
