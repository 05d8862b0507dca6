"""Does a null-space adapter disturb pre-trained behaviour less than plain LoRA at the same task performance?

Each method fine-tunes the same base model on the task with the same rank, targets, steps and learning
rate, for every seed: ``lora`` (peft's default init), ``null_frozen_A`` and ``null_projection`` (LoRA-Null),
``corda_kpm`` (peft's CorDA, knowledge-preserved mode, calibrated on the same texts as LoRA-Null) and the
control ``head_only`` (the same peft model with every LoRA matrix frozen: only the classifier head trains,
so it shows what the task needs from the backbone at all). Measured
per run: the task accuracy on the validation split, and preservation on held-out texts of another task
(``probe_task``), where the model was not trained: the cosine between the base model's and the tuned
model's mean-pooled sentence embeddings (1 = unchanged), and the accuracy of a linear probe for the other
task trained on the tuned model's frozen embeddings, beside the same probe on the base model's.

Files in ``output_dir``: ``preservation.csv`` (one row per method and seed), ``preservation.json`` (means and
standard deviations per method, the base model's row) and ``preservation.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments, set_seed

from .. import distributed
from ..config import AT_LEAST_ONE, Bounds, DataArguments, ModelArguments, check_bounds, given_keys
from ..errors import ConfigError
from ..io import write_json
from ..models import eval_mode, load_model, model_device
from ..plotting import plotting_available, require_pyplot
from ..tasks import load_builtin_task
from ..texts import text_batches
from ..trainer import HfExtTrainer
from .config import LoraNullArguments
from .init import initialize_lora_null_weights
from .study import calibration_batches, prepare_run

METHODS = ("lora", "null_frozen_A", "null_projection", "corda_kpm", "head_only")


@dataclass
class PreservationArguments:
    """Which adapters to compare, on how many seeds, and the other task that measures preservation."""

    BOUNDS: ClassVar[dict[str, Bounds]] = {"probe_samples": AT_LEAST_ONE}

    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata={"help": "Adapters to compare: lora, null_frozen_A, null_projection, corda_kpm, head_only."},
    )
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Training seeds, one run each."})
    probe_task: str = field(
        default="sentiment", metadata={"help": "Built-in task whose held-out texts measure preservation."}
    )
    probe_samples: int = field(
        default=400, metadata={"help": "Examples of the probe task's train and validation splits each."}
    )

    def __post_init__(self):
        check_bounds(self)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods {self.methods} must be a non-empty list of distinct {', '.join(METHODS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {self.seeds} must be a non-empty list without repeats")


@torch.no_grad()
def sentence_embeddings(model: torch.nn.Module, batches) -> torch.Tensor:
    """Mean over non-pad tokens of the last hidden state, float64, one row per example."""
    rows = []
    device = model_device(model)
    with eval_mode(model):
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].double()
            mask = inputs["attention_mask"].unsqueeze(-1).double()
            rows.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    return torch.cat(rows)


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *, l2: float = 1e-3
) -> float:
    """Accuracy on ``test`` of an L2-regularised logistic regression fitted on ``train`` (standardised
    features, full-batch L-BFGS, deterministic)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-8)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(xs.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ weight + bias, train_y) + l2 * (weight * weight).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((xt @ weight + bias).argmax(1) == test_y).double().mean())


def _probe_sets(tokenizer, task: str, samples: int, max_length: int):
    try:
        splits = load_builtin_task(task)
    except ValueError as err:
        raise ConfigError(f"probe_task={task!r}: {err}") from None
    sets = {}
    for split in ("train", "validation"):
        dataset = splits[split].select(range(min(samples, len(splits[split]))))
        texts = [str(t) for t in list(dataset["text"])]
        sets[split] = (
            text_batches(tokenizer, texts, batch_size=64, max_length=max_length),
            torch.tensor(dataset["label"]),
        )
    return sets


def _adapted_model(method: str, model_args, args: LoraNullArguments, tokenizer, data, calibration, seed, base_seed):
    from peft import get_peft_model

    model = load_model(model_args, tokenizer, data.labels, seed=base_seed)
    set_seed(seed)
    config = args.lora_config(model_args.task_type)
    if method == "corda_kpm":
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda

        config = args.lora_config(
            model_args.task_type, init_lora_weights="corda", corda_config=CordaConfig(corda_method="kpm")
        )

        @torch.no_grad()
        def run_model():  # CorDA's covariance hooks assume batch size 1
            for batch in calibration:
                for i in range(batch["input_ids"].shape[0]):
                    keep = batch["attention_mask"][i].bool()
                    model(input_ids=batch["input_ids"][i : i + 1, keep])

        with eval_mode(model):
            preprocess_corda(model, config, run_model=run_model)
        return get_peft_model(model, config)
    model = get_peft_model(model, config)
    if method == "head_only":
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.requires_grad_(False)
    elif method != "lora":
        initialize_lora_null_weights(model, calibration, mode=method, progress=False)
    return model


def run_preservation_study(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: LoraNullArguments,
    study: PreservationArguments,
    training_args: TrainingArguments,
) -> Path:
    """Every method x seed: train, task accuracy, embedding cosine and probe accuracy on the probe task."""
    ignored = sorted({"mode", "freeze_A"} & given_keys(training_args, type(args)))
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)} do not apply to the preservation recipe: it compares the adapters named in "
            'methods (e.g. methods=["lora", "null_frozen_A", "null_projection"])'
        )
    if training_args.resume_from_checkpoint:
        raise ConfigError(
            "the preservation recipe does not resume (it trains one model per method and seed); run it without "
            "resume_from_checkpoint, with overwrite_output_dir=true to start afresh"
        )
    root, tokenizer, data, base = prepare_run(model_args, data_args, args, training_args, "preservation.json")
    calibration = calibration_batches(args, data_args, tokenizer, data)
    probe = _probe_sets(tokenizer, study.probe_task, study.probe_samples, data_args.max_seq_length)
    base_embeddings = {split: sentence_embeddings(base, batches) for split, (batches, _) in probe.items()}
    base_probe = linear_probe_accuracy(
        base_embeddings["train"], probe["train"][1], base_embeddings["validation"], probe["validation"][1]
    )
    rows = []
    for seed in study.seeds:
        for method in study.methods:
            model = _adapted_model(method, model_args, args, tokenizer, data, calibration, seed, training_args.seed)
            run_args = dataclasses.replace(training_args, output_dir=str(root / f"seed-{seed}" / method), seed=seed)
            trainer = HfExtTrainer(model=model, args=run_args, processing_class=tokenizer, **data.trainer_kwargs())
            trainer.train()
            accuracy = trainer.evaluate()["eval_accuracy"]
            tuned = {split: sentence_embeddings(model, batches) for split, (batches, _) in probe.items()}
            cosine = torch.nn.functional.cosine_similarity(tuned["validation"], base_embeddings["validation"], dim=1)
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "task_accuracy": accuracy,
                    "embedding_cosine": float(cosine.mean()),
                    "embedding_cosine_min": float(cosine.min()),
                    "probe_accuracy": linear_probe_accuracy(
                        tuned["train"], probe["train"][1], tuned["validation"], probe["validation"][1]
                    ),
                }
            )
            print(f"preservation: {rows[-1]}", flush=True)
    if distributed.is_main_process():
        _write(root, rows, base_probe, study)
    distributed.barrier()
    return root


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _write(root: Path, rows: list[dict[str, Any]], base_probe: float, study: PreservationArguments) -> None:
    with open(root / "preservation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        method: {
            metric: _mean_sd([r[metric] for r in rows if r["method"] == method])
            for metric in ("task_accuracy", "embedding_cosine", "probe_accuracy")
        }
        for method in study.methods
    }
    write_json(
        root / "preservation.json",
        {"probe_task": study.probe_task, "base_probe_accuracy": base_probe, "methods": summary, "rows": rows},
    )
    lines = [
        f"base model: probe accuracy on {study.probe_task} {base_probe:.4f}",
        "| method | task accuracy | embedding cosine | probe accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for method, values in summary.items():
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in values.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)
    if plotting_available("preservation figure"):
        _figure(root, rows, base_probe, study)


def _figure(root: Path, rows: list[dict[str, Any]], base_probe: float, study: PreservationArguments) -> None:
    plt = require_pyplot()

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in study.methods:
        mine = [r for r in rows if r["method"] == method]
        axes[0].scatter([r["embedding_cosine"] for r in mine], [r["task_accuracy"] for r in mine], label=method)
        axes[1].scatter([r["probe_accuracy"] for r in mine], [r["task_accuracy"] for r in mine], label=method)
    axes[0].set_xlabel(f"cosine with the base embedding ({study.probe_task} texts)")
    axes[1].set_xlabel(f"linear probe accuracy, {study.probe_task}")
    axes[1].axvline(base_probe, color="k", ls="--", lw=1, label="base model")
    for ax in axes:
        ax.set_ylabel("task accuracy (validation)")
        ax.legend(fontsize=8)
    axes[0].set_title("preservation of the embeddings: one point per method and seed")
    axes[1].set_title("what a probe can still read from them")
    figure.tight_layout()
    figure.savefig(root / "preservation.png", dpi=110)
    plt.close(figure)
