"""The drift study: does LoRA move a model's representations less than full fine-tuning at equal task loss?

Every arm (a method at one learning rate; LoRA at each rank too) is trained from the same base model for every seed.
In ``output_dir``: ``eval_subset.json`` (the fixed validation examples the task is scored on and whose
representations are compared), ``study.json`` (settings, the base model's task loss and metric, the chance level,
the frozen-base probe: the head alone fitted on the base features), ``base/`` and ``base-offtask/`` (the base
model's representations of the task's and the off-task texts, every token), and per seed and arm
``seed-<s>/<arm>/``: the Trainer's outputs and TensorBoard run, ``metrics.json`` (task loss and metric on the
subset), ``dump/`` and ``dump-offtask/`` (the fine-tuned model's representations) and, for LoRA, ``adapter/`` (full
fine-tunes are not saved). Then :func:`hf_ext.drift.analysis.analyze_run` writes ``drift.csv`` and ``drift.json``
(the frontiers and the comparisons at matched loss) and :func:`~hf_ext.drift.analysis.plot` ``drift.png`` (also
logged to TensorBoard). A rerun with the same ``output_dir`` keeps the base dumps and every finished run and redoes
the missing or damaged ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import DataLoader
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .. import distributed
from ..config import DataArguments, ModelArguments
from ..data import eval_subset, load_model_and_data
from ..errors import ConfigError, DataError, FileFormatError, RunDirectoryError
from ..io import read_json, write_json
from ..models import classifier_head, load_model
from ..outputs import changed_settings, check_output_dir, tensorboard_writer
from ..plotting import plotting_available
from ..probe import fit_probe, head_state, restore_head
from ..stats import majority_share
from ..texts import load_texts, text_batches
from ..trainer import HfExtTrainer
from .analysis import analyze_run, figures, format_summary, plot, run_dir
from .callbacks import DriftCallback
from .config import Arm, DriftArguments
from .recorders import RepresentationRecorder
from .shards import DumpReader, dump_representations

# What the Trainer's evaluate() reports for each task type (hf_ext.data.compute_metrics_fn).
TASK_METRICS = {"seq_cls": "eval_accuracy", "causal_lm": "eval_response_token_accuracy"}


def lora_model(model, drift: DriftArguments, arm: Arm, task_type: str):
    """``model`` wrapped in a fresh peft LoRA adapter of ``arm``'s rank (the classifier head stays trainable for
    seq_cls)."""
    from peft import get_peft_model

    return get_peft_model(model, drift.lora_config_of(arm, task_type))


# Settings that only say which runs to make (seeds, arms) or how to analyse them: a rerun may change them, keeping
# the finished runs it still asks for. Every other setting, the training ones included, must match.
GROWABLE = (
    "seeds",
    "methods",
    "full_learning_rates",
    "lora_learning_rates",
    "lora_ranks",
    "matched_levels",
    "bootstrap_samples",
)
TRAINING_KEYS = (
    "seed",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "head_learning_rate",
    "bf16",
    "fp16",
)
# Training settings a resumed study may raise: every run then continues from its last checkpoint.
RESUMABLE = ("max_steps", "num_train_epochs")


def _settings(model_args: ModelArguments, data_args: DataArguments, drift: DriftArguments, training_args) -> dict:
    return {
        "model": model_args.model_name_or_path,
        "task_type": model_args.task_type,
        "data": data_args.train_file or data_args.dataset_name,
        "max_train_samples": data_args.max_train_samples,
        "max_seq_length": data_args.max_seq_length,
        "training": {key: str(getattr(training_args, key, None)) for key in TRAINING_KEYS},
        "task_metric": TASK_METRICS[model_args.task_type],
        **dataclasses.asdict(drift),
    }


def _check_same_study(path: Path, settings: dict, *, resuming: bool) -> None:
    if not path.is_file():
        return
    saved = read_json(path)
    wanted = {k: v for k, v in settings.items() if k not in GROWABLE}
    if resuming:  # continuing every run from its last checkpoint to more steps is what resuming is for
        wanted["training"] = wanted["training"] | {k: saved.get("training", {}).get(k) for k in RESUMABLE}
    changed = changed_settings(saved, wanted)
    if changed:
        raise RunDirectoryError(
            f"{path.parent} holds a drift study made with {changed}; only seeds, arms and analysis settings "
            f"({', '.join(GROWABLE)}) may change in a rerun (and {', '.join(RESUMABLE)} with "
            "resume_from_checkpoint=true): use another output_dir, or overwrite_output_dir=true to start over"
        )


def _readable_dump(path: Path) -> bool:
    try:
        DumpReader(path)
    except FileFormatError:
        return False
    return True


def _run_finished(directory: Path, offtask: bool) -> bool:
    """A run whose metrics and dumps are on disk and readable (a damaged run is redone)."""
    dumps = ["dump", "dump-offtask"] if offtask else ["dump"]
    return (directory / "metrics.json").is_file() and all(_readable_dump(directory / d) for d in dumps)


def _batches(dataset, training_args, collator) -> list:
    return list(DataLoader(dataset, batch_size=training_args.per_device_eval_batch_size, collate_fn=collator))


def _offtask_texts(drift: DriftArguments, tokenizer, max_length: int, batch_size: int):
    """``(example ids, batches)`` of the off-task texts, or ``None`` without ``offtask_dataset``."""
    if drift.offtask_dataset is None:
        return None
    try:
        ids, texts = load_texts(
            drift.offtask_dataset,
            split=drift.offtask_split,
            column=drift.offtask_text_column,
            limit=drift.offtask_samples,
            option="offtask_text_column",
        )
    except (ConfigError, DataError) as err:
        raise type(err)(f"offtask_dataset={drift.offtask_dataset!r}: {err}") from None
    return ids, text_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)


def frozen_base_probe(base, data, subset, training_args) -> dict | None:
    """The task head alone fitted on the base model's frozen features (3 epochs of the training data, AdamW at
    ``head_learning_rate`` or 1e-3), scored on ``subset``: how much of the task the base features already
    carry. The head is put back afterwards; ``None`` for a model without a classifier head."""
    if classifier_head(base) is None:
        return None
    train = list(
        DataLoader(
            data.train,
            batch_size=training_args.per_device_train_batch_size,
            shuffle=False,
            collate_fn=data.collator,
        )
    )
    state = head_state(base)
    rate = getattr(training_args, "head_learning_rate", None) or 1e-3
    result = fit_probe(base, train, _batches(subset, training_args, data.collator), learning_rate=rate)
    restore_head(base, state)
    return result.to_json() | {"learning_rate": rate}


def run_drift_study(
    model_args: ModelArguments, data_args: DataArguments, drift: DriftArguments, training_args: TrainingArguments
) -> Path:
    """Fine-tune every arm for every seed, dump the representations, analyse and plot; returns ``output_dir``.

    A rerun with the same ``output_dir`` and settings keeps the base dumps and every finished run and redoes
    the rest (a run is finished when its ``metrics.json`` and readable dumps are on disk); it may add or drop
    seeds and arms (:data:`GROWABLE`), never change how a run trains. With ``resume_from_checkpoint=true`` no
    run is kept: each continues from its last checkpoint (to a larger ``max_steps`` or ``num_train_epochs``).
    """
    distributed.check_launcher(training_args, "the drift study", "weights")  # before any output
    root = Path(training_args.output_dir)
    overwrite = getattr(training_args, "overwrite_output_dir", False)
    arms = drift.arms(training_args.learning_rate)
    offtask = drift.offtask_dataset is not None
    runs = [run_dir(root, seed, arm.name) for seed in drift.seeds for arm in arms]
    bases = ["base", "base-offtask"] if offtask else ["base"]
    complete = all(_run_finished(d, offtask) for d in runs) and all(_readable_dump(root / b) for b in bases)
    resuming = bool(training_args.resume_from_checkpoint)
    check_output_dir(root, finished=["drift.json"] if complete else [], overwrite=overwrite, resuming=resuming)
    settings = _settings(model_args, data_args, drift, training_args)
    if not overwrite:
        _check_same_study(root / "study.json", settings, resuming=resuming)
    tokenizer, data, base = load_model_and_data(model_args, data_args, seed=training_args.seed)
    base = base.to(training_args.device)
    RepresentationRecorder(base, pooling=drift.pooling, layers=drift.layers)  # checks both before any work
    if "lora" in drift.methods:
        drift.check_targets(base)
    off = _offtask_texts(drift, tokenizer, data_args.max_seq_length, training_args.per_device_eval_batch_size)
    indices = eval_subset(data.validation, drift.eval_subset_size, drift.subset_seed, root / "eval_subset.json")
    subset = data.validation.select(indices)
    texts = {"dump": ([f"validation:{i}" for i in indices], _batches(subset, training_args, data.collator))}
    if off is not None:
        texts["dump-offtask"] = off
    dump = {
        "pooling": "tokens",
        "layers": drift.layers,
        "dtype": drift.dump_dtype,
        "model_name": model_args.model_name_or_path,
        "overwrite": True,  # only dumps that are missing, damaged or stale are written
    }
    base_args = dataclasses.replace(training_args, report_to=[])
    base_metrics = HfExtTrainer(model=base, args=base_args, **data.trainer_kwargs()).evaluate(eval_dataset=subset)
    probe = frozen_base_probe(base, data, subset, training_args)
    if distributed.is_main_process():
        labels = subset["labels"] if "labels" in subset.column_names else None
        write_json(
            root / "study.json",
            {
                **settings,
                "arms": [dataclasses.asdict(arm) | {"name": arm.name, "frontier": arm.frontier} for arm in arms],
                "base_task_metric": base_metrics.get(settings["task_metric"]),
                "base_eval_loss": base_metrics.get("eval_loss"),
                "chance_task_metric": majority_share(labels) if labels is not None else None,
                "frozen_base_probe": probe,
                "eval_examples": len(indices),
                "offtask_examples": len(off[0]) if off is not None else 0,
            },
        )
    for name, (ids, batches) in texts.items():
        where = root / name.replace("dump", "base")
        if overwrite or not _readable_dump(where):
            dump_representations(base, batches, where, example_ids=ids, **dump)
    del base
    for seed in drift.seeds:
        for arm in arms:
            directory = run_dir(root, seed, arm.name)
            if _run_finished(directory, offtask) and not (overwrite or resuming):
                print(f"drift study: {directory} is finished, keeping it", flush=True)
                continue
            _train_run(model_args, drift, training_args, data, tokenizer, subset, texts, dump, directory, seed, arm)
    if distributed.is_main_process():
        summary = analyze_run(root)
        drawn = plotting_available("drift figure")
        if drawn:
            plot(root)
        writer = tensorboard_writer(training_args, root / "analysis") if drawn else None
        if writer is not None:
            for name, figure in figures(root).items():
                writer.add_figure(f"drift/{name}", figure, close=True)
            writer.close()
        print(format_summary(summary), flush=True)
        written = "drift.csv, drift.json" + (", drift.png" if drawn else "")
        print(f"\ndrift study: {root}/{written}\ntensorboard: tensorboard --logdir {root}")
    distributed.barrier()
    return root


def _train_run(model_args, drift, training_args, data, tokenizer, subset, texts, dump, directory: Path, seed, arm):
    """Fine-tune one arm from the base model and write its ``metrics.json``, dumps (and LoRA ``adapter/``)."""
    # Every run starts from the base model (head included); the seed varies data order, dropout and the
    # adapter's initialisation.
    model = load_model(model_args, tokenizer, data.labels, seed=training_args.seed).to(training_args.device)
    set_seed(seed)
    if arm.method == "lora":
        model = lora_model(model, drift, arm, model_args.task_type)
    callbacks = []
    if drift.drift_steps:
        base_dump = directory.parent.parent / "base"
        batches = texts["dump"][1]
        callbacks.append(
            DriftCallback(
                batches, every=drift.drift_steps, pooling=drift.pooling, layers=drift.layers, base_dump=base_dump
            )
        )
    args = dataclasses.replace(training_args, output_dir=str(directory), seed=seed, learning_rate=arm.learning_rate)
    trainer = HfExtTrainer(
        model=model, args=args, processing_class=tokenizer, callbacks=callbacks, **data.trainer_kwargs()
    )
    # resume_from_checkpoint: each unfinished run continues from its own last checkpoint, if it saved one
    resume = (
        get_last_checkpoint(str(directory)) if training_args.resume_from_checkpoint and directory.is_dir() else None
    )
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate(eval_dataset=subset)
    model = trainer.accelerator.unwrap_model(trainer.model)
    lora = arm.method == "lora"
    if lora:
        trainer.save_model(str(directory / "adapter"))  # peft saves the adapter only: hf-ext drift measure --adapter
    for name, (ids, batches) in texts.items():
        dump_representations(
            model,
            batches,
            directory / name,
            example_ids=ids,
            adapter=str(directory / "adapter") if lora else None,
            checkpoint_step=trainer.state.global_step,
            **dump,
        )
    if distributed.is_main_process():
        history = callbacks[0].history if callbacks else []
        write_json(
            directory / "metrics.json",
            {**dataclasses.asdict(arm), "arm": arm.name, "seed": seed, **metrics, "in_training": history},
        )
