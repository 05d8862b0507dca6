"""The drift study: does LoRA move a model's representations less than full fine-tuning?

In ``output_dir``: ``eval_subset.json`` (the fixed validation examples), ``study.json`` (settings and
the base model's task metric), ``base/`` (the base model's representations, every token), and per
seed and method ``seed-<s>/<method>/``: the Trainer's outputs and TensorBoard run (with in-training
drift), ``metrics.json`` (task metric and in-training drift) and ``dump/`` (the fine-tuned model's
representations). Then :func:`hf_ext.drift.analysis.analyze_run` writes ``drift.csv`` and
``drift.json`` and :func:`~hf_ext.drift.analysis.plot` ``drift.png`` (also logged to TensorBoard).
A rerun with the same ``output_dir`` skips finished runs and resumes unfinished dumps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import DataLoader
from transformers import TrainingArguments, set_seed

from .. import distributed
from ..config import DataArguments, ModelArguments
from ..data import eval_subset, prepare_data
from ..errors import RunDirectoryError
from ..io import read_json, write_json
from ..models import load_model, load_tokenizer
from ..outputs import changed_setting, check_output_dir, tensorboard_writer
from ..run_logger import print_run_locations
from ..trainer import HfExtTrainer
from .analysis import analyze_run, figures, plot, run_dir
from .callbacks import DriftCallback
from .config import DriftArguments
from .recorders import check_pooling
from .shards import dump_representations


def lora_model(model, drift: DriftArguments, task_type: str):
    """``model`` wrapped in a fresh peft LoRA adapter (the classifier head stays trainable for seq_cls)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=drift.lora_r,
        lora_alpha=drift.lora_alpha,
        lora_dropout=drift.lora_dropout,
        target_modules=drift.lora_target_modules or None,
        task_type="SEQ_CLS" if task_type == "seq_cls" else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _settings(model_args: ModelArguments, data_args: DataArguments, drift: DriftArguments) -> dict:
    return {
        "model": model_args.model_name_or_path,
        "task_type": model_args.task_type,
        "data": data_args.train_file or data_args.dataset_name,
        **dataclasses.asdict(drift),
    }


def _check_same_study(path: Path, settings: dict) -> None:
    if not path.is_file():
        return
    saved = read_json(path)
    key = changed_setting(saved, settings)
    if key is not None:
        raise RunDirectoryError(
            f"{path.parent} holds a drift study with {key}={saved.get(key)!r}, not {settings[key]!r}; "
            "use another output_dir, or overwrite_output_dir=true to start over"
        )


def run_drift_study(
    model_args: ModelArguments, data_args: DataArguments, drift: DriftArguments, training_args: TrainingArguments
) -> Path:
    """Fine-tune by each method and seed, dump the representations, analyse and plot; returns ``output_dir``."""
    root = Path(training_args.output_dir)
    overwrite = getattr(training_args, "overwrite_output_dir", False)
    check_output_dir(root, finished=["drift.json"], overwrite=overwrite, resuming=False)
    settings = _settings(model_args, data_args, drift)
    if not overwrite:
        _check_same_study(root / "study.json", settings)
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    data = prepare_data(data_args, tokenizer, model_args.task_type, seed=training_args.seed)
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
        "overwrite": overwrite,
    }
    base = load_model(model_args, tokenizer, data.labels, seed=training_args.seed).to(training_args.device)
    check_pooling(base, drift.pooling)
    base_args = dataclasses.replace(training_args, report_to=[])
    base_metrics = HfExtTrainer(model=base, args=base_args, **data.trainer_kwargs()).evaluate()
    if distributed.is_main_process():
        write_json(root / "study.json", {**settings, "base_eval_accuracy": base_metrics.get("eval_accuracy")})
    dump_representations(base, batches, root / "base", model_name=model_args.model_name_or_path, **dump)
    del base
    trainer = None
    for seed in drift.seeds:
        for method in drift.methods:
            directory = run_dir(root, seed, method)
            if (directory / "metrics.json").is_file() and not overwrite:
                print(f"drift study: {directory} is finished, skipping it", flush=True)
                continue
            # Every run starts from the base model (head included); the seed varies data order, dropout and
            # the adapter's initialisation.
            model = load_model(model_args, tokenizer, data.labels, seed=training_args.seed).to(training_args.device)
            set_seed(seed)
            learning_rate = training_args.learning_rate
            if method == "lora":
                model = lora_model(model, drift, model_args.task_type)
                learning_rate = drift.lora_learning_rate or learning_rate
            callback = DriftCallback(
                batches, every=drift.drift_steps, pooling=drift.pooling, layers=drift.layers, base_dump=root / "base"
            )
            args = dataclasses.replace(
                training_args, output_dir=str(directory), seed=seed, learning_rate=learning_rate
            )
            trainer = HfExtTrainer(
                model=model, args=args, processing_class=tokenizer, callbacks=[callback], **data.trainer_kwargs()
            )
            trainer.train()
            metrics = trainer.evaluate()
            dump_representations(
                trainer.accelerator.unwrap_model(trainer.model),
                batches,
                directory / "dump",
                model_name=model_args.model_name_or_path,
                adapter=method if method == "lora" else None,
                checkpoint_step=trainer.state.global_step,
                **dump,
            )
            if distributed.is_main_process():
                write_json(
                    directory / "metrics.json",
                    {"method": method, "seed": seed, **metrics, "in_training": callback.history},
                )
    if distributed.is_main_process():
        summary = analyze_run(root)
        plot(root)
        writer = tensorboard_writer(training_args, root / "analysis")
        if writer is not None:
            for name, figure in figures(root).items():
                writer.add_figure(f"drift/{name}", figure, close=True)
            writer.close()
        _print_summary(summary)
    distributed.barrier()
    if trainer is not None:
        print_run_locations(trainer)
    return root


def _print_summary(summary: dict) -> None:
    comparison = summary["comparison"]
    print("\ntask metric (validation accuracy):", flush=True)
    for name, value in summary["task_metric"].items():
        print(f"  {name:16s} {value if value is None else round(value, 4)}")
    if "per_layer" not in comparison:
        print(f"drift study: no comparison ({comparison['skipped']})")
        return
    print(f"drift (1 - CKA, {comparison['pooling']} pooling), mean over seeds:")
    print("  layer  full    lora    reduction")
    for layer, values in comparison["per_layer"].items():
        print(
            f"  {layer:>5}  {values['drift_full']:.4f}  {values['drift_lora']:.4f}  "
            f"{values['reduction_mean']:+.1%} ± {values['reduction_sd']:.1%}"
        )
    for key in ("less", "reduction"):
        test = comparison[key]
        margin = f" by >= {test['reduction']:.0%}" if key == "reduction" else ""
        print(
            f"LoRA drifts less{margin}: p = {test['p_value']:.4g} "
            f"(n = {test['n']}, smallest possible p {test['min_p_value']:.3g})",
            flush=True,
        )
