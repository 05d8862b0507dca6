"""The drift study: does LoRA move a model's representations less than full fine-tuning?

In ``output_dir``: ``eval_subset.json`` (the fixed validation examples), ``study.json`` (settings and
the base model's task metric), ``base/`` (the base model's representations, every token), and per
seed and method ``seed-<s>/<method>/``: the Trainer's outputs and TensorBoard run (with in-training
drift), ``metrics.json`` (task metric and in-training drift), ``dump/`` (the fine-tuned model's
representations) and, for LoRA, ``adapter/`` (the trained adapter; full fine-tunes are not saved).
Then :func:`hf_ext.drift.analysis.analyze_run` writes ``drift.csv`` and ``drift.json`` and
:func:`~hf_ext.drift.analysis.plot` ``drift.png`` (also logged to TensorBoard). A rerun with the same
``output_dir`` keeps the base dump and every finished run and redoes the missing or damaged ones.
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
from ..errors import FileFormatError, RunDirectoryError
from ..io import read_json, write_json
from ..models import load_model
from ..outputs import changed_settings, check_output_dir, tensorboard_writer
from ..plotting import plotting_available
from ..trainer import HfExtTrainer
from .analysis import analyze_run, figures, format_summary, plot, run_dir
from .callbacks import DriftCallback
from .config import DriftArguments
from .recorders import RepresentationRecorder
from .shards import DumpReader, dump_representations

# What the Trainer's evaluate() reports for each task type (hf_ext.data.compute_metrics_fn).
TASK_METRICS = {"seq_cls": "eval_accuracy", "causal_lm": "eval_response_token_accuracy"}


def lora_model(model, drift: DriftArguments, task_type: str):
    """``model`` wrapped in a fresh peft LoRA adapter (the classifier head stays trainable for seq_cls)."""
    from peft import get_peft_model

    return get_peft_model(model, drift.lora_config(task_type))


def _settings(model_args: ModelArguments, data_args: DataArguments, drift: DriftArguments) -> dict:
    return {
        "model": model_args.model_name_or_path,
        "task_type": model_args.task_type,
        "data": data_args.train_file or data_args.dataset_name,
        "task_metric": TASK_METRICS[model_args.task_type],
        **dataclasses.asdict(drift),
    }


def _check_same_study(path: Path, settings: dict) -> None:
    if not path.is_file():
        return
    saved = read_json(path)
    changed = changed_settings(saved, settings)
    if changed:
        raise RunDirectoryError(
            f"{path.parent} holds a drift study made with {changed}; use another output_dir, or "
            "overwrite_output_dir=true to start over"
        )


def _readable_dump(path: Path) -> bool:
    try:
        DumpReader(path)
    except FileFormatError:
        return False
    return True


def _run_finished(directory: Path) -> bool:
    """A run whose metrics and dump are on disk and readable (a damaged run is redone)."""
    return (directory / "metrics.json").is_file() and _readable_dump(directory / "dump")


def run_drift_study(
    model_args: ModelArguments, data_args: DataArguments, drift: DriftArguments, training_args: TrainingArguments
) -> Path:
    """Fine-tune by each method and seed, dump the representations, analyse and plot; returns ``output_dir``.

    A rerun with the same ``output_dir`` and settings keeps the base dump and every finished run and redoes
    the rest (a run is finished when its ``metrics.json`` and a readable dump are on disk).
    """
    distributed.check_launcher(training_args, "the drift study", "weights")  # before any output
    root = Path(training_args.output_dir)
    overwrite = getattr(training_args, "overwrite_output_dir", False)
    runs = [run_dir(root, seed, method) for seed in drift.seeds for method in drift.methods]
    complete = all(_run_finished(directory) for directory in runs) and _readable_dump(root / "base")
    check_output_dir(root, finished=["drift.json"] if complete else [], overwrite=overwrite, resuming=False)
    settings = _settings(model_args, data_args, drift)
    if not overwrite:
        _check_same_study(root / "study.json", settings)
    tokenizer, data, base = load_model_and_data(model_args, data_args, seed=training_args.seed)
    base = base.to(training_args.device)
    RepresentationRecorder(base, pooling=drift.pooling, layers=drift.layers)  # checks both before any work
    if "lora" in drift.methods:
        drift.check_targets(base)
    indices = eval_subset(data.validation, drift.eval_subset_size, drift.subset_seed, root / "eval_subset.json")
    batches = list(
        DataLoader(
            data.validation.select(indices),
            batch_size=training_args.per_device_eval_batch_size,
            collate_fn=data.collator,
        )
    )
    dump = {
        "example_ids": [f"validation:{i}" for i in indices],
        "pooling": "tokens",
        "layers": drift.layers,
        "dtype": drift.dump_dtype,
        "model_name": model_args.model_name_or_path,
        "overwrite": True,  # only dumps that are missing, damaged or stale are written
    }
    base_args = dataclasses.replace(training_args, report_to=[])
    base_metrics = HfExtTrainer(model=base, args=base_args, **data.trainer_kwargs()).evaluate()
    if distributed.is_main_process():
        write_json(root / "study.json", {**settings, "base_task_metric": base_metrics.get(settings["task_metric"])})
    if overwrite or not _readable_dump(root / "base"):
        dump_representations(base, batches, root / "base", **dump)
    del base
    for seed in drift.seeds:
        for method in drift.methods:
            directory = run_dir(root, seed, method)
            if _run_finished(directory) and not overwrite:
                print(f"drift study: {directory} is finished, keeping it", flush=True)
                continue
            _train_run(model_args, drift, training_args, data, tokenizer, batches, dump, directory, seed, method)
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


def _train_run(model_args, drift, training_args, data, tokenizer, batches, dump, directory: Path, seed, method):
    """Fine-tune one run from the base model and write its ``metrics.json``, ``dump/`` (and LoRA ``adapter/``)."""
    # Every run starts from the base model (head included); the seed varies data order, dropout and the
    # adapter's initialisation.
    model = load_model(model_args, tokenizer, data.labels, seed=training_args.seed).to(training_args.device)
    set_seed(seed)
    learning_rate = training_args.learning_rate
    if method == "lora":
        model = lora_model(model, drift, model_args.task_type)
        learning_rate = drift.lora_learning_rate or learning_rate
    callback = DriftCallback(
        batches,
        every=drift.drift_steps,
        pooling=drift.pooling,
        layers=drift.layers,
        base_dump=directory.parent.parent / "base",
    )
    args = dataclasses.replace(training_args, output_dir=str(directory), seed=seed, learning_rate=learning_rate)
    trainer = HfExtTrainer(
        model=model, args=args, processing_class=tokenizer, callbacks=[callback], **data.trainer_kwargs()
    )
    # resume_from_checkpoint: each unfinished run continues from its own last checkpoint, if it saved one
    resume = (
        get_last_checkpoint(str(directory)) if training_args.resume_from_checkpoint and directory.is_dir() else None
    )
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if method == "lora":
        trainer.save_model(str(directory / "adapter"))  # peft saves the adapter only: hf-ext drift measure --adapter
    dump_representations(
        model,
        batches,
        directory / "dump",
        adapter=str(directory / "adapter") if method == "lora" else None,
        checkpoint_step=trainer.state.global_step,
        **dump,
    )
    if distributed.is_main_process():
        write_json(
            directory / "metrics.json", {"method": method, "seed": seed, **metrics, "in_training": callback.history}
        )
