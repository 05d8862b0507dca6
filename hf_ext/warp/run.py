"""A WaRP run: its arguments, tokenizer, the safety and utility data (one classifier head holding both
tasks' classes), its directory (:mod:`hf_ext.warp.layout`), the seeds' directories, the subdirectories each
phase writes, and loading its models, basis and masks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, TrainingArguments

from .. import distributed
from ..config import DataArguments, ModelArguments
from ..data import PreparedData, prepare_data
from ..errors import ConfigError, RunDirectoryError
from ..io import load_tensors, read_json, write_json
from ..models import load_model, load_tokenizer
from ..outputs import check_output_dir
from ..targets import select_linear
from ..version import __version__
from .arms import Arm, study_arms
from .config import WarpArguments
from .delta import apply_delta
from .layout import WarpLayout

Task = Literal["safety", "utility"]


@dataclass
class WarpRun:
    """Everything the phases share: arguments, tokenizer, the safety and utility data."""

    model_args: ModelArguments
    data_args: DataArguments
    warp_args: WarpArguments
    training_args: TrainingArguments
    tokenizer: Any
    safety: PreparedData
    utility: PreparedData
    labels: list[str] | None  # seq_cls: safety classes then utility classes, one head for both
    safety_classes: list[int] | None
    utility_classes: list[int] | None
    ood: PreparedData | None = None  # seq_cls: ood_dataset_name, labelled with the safety classes

    @property
    def dir(self) -> Path:
        return Path(self.training_args.output_dir)

    @property
    def uses_prototypes(self) -> bool:
        """seq_cls with head 'prototypes' (:mod:`hf_ext.warp.head`)."""
        return self.labels is not None and self.warp_args.head == "prototypes"

    @property
    def layout(self) -> WarpLayout:
        return WarpLayout(self.dir)

    def data(self, task: Task) -> PreparedData:
        return {"safety": self.safety, "utility": self.utility}[task]

    def classes(self, task: Task) -> list[int] | None:
        """seq_cls: the ids of ``task``'s classes in the shared head; None for causal_lm."""
        return {"safety": self.safety_classes, "utility": self.utility_classes}[task]

    @classmethod
    def build(cls, model_args, data_args, warp_args, training_args, *, check_output: bool = True) -> WarpRun:
        """Load the tokenizer and both tasks' data. With ``check_output`` the output directory is checked
        first: writable, and holding no finished result of the phases to run (unless ``overwrite_output_dir``)."""
        if check_output:
            steps = phase_steps(warp_args, training_args.learning_rate)
            for root in seed_roots(warp_args, training_args).values():
                layout = WarpLayout(root)
                check_output_dir(
                    layout.root,
                    finished=[layout.metadata(step).relative_to(layout.root) for step in steps],
                    overwrite=getattr(training_args, "overwrite_output_dir", False),
                    resuming=bool(training_args.resume_from_checkpoint),
                )
        tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
        safety_args = safety_data_args(data_args, warp_args)
        safety = prepare_data(safety_args, tokenizer, model_args.task_type)
        utility = prepare_data(data_args, tokenizer, model_args.task_type)
        labels = safety_classes = utility_classes = ood = None
        if warp_args.ood_dataset_name and model_args.task_type == "seq_cls":
            ood_args = dataclasses.replace(safety_args, dataset_name=warp_args.ood_dataset_name, train_file=None)
            ood = prepare_data(ood_args, tokenizer, model_args.task_type)
            if ood.labels != safety.labels:
                raise ConfigError(
                    f"ood_dataset_name {warp_args.ood_dataset_name!r} has classes {ood.labels}; the safety data "
                    f"has {safety.labels}: an outside check needs the same classes in the same order"
                )
        if model_args.task_type == "seq_cls":
            offset = len(safety.labels)
            labels = [f"safety:{name}" for name in safety.labels] + [f"utility:{name}" for name in utility.labels]
            safety_classes, utility_classes = list(range(offset)), list(range(offset, len(labels)))
            utility = _shift_labels(utility, offset)
            argmax = _argmax_within_label_task([safety_classes, utility_classes])
            safety = dataclasses.replace(safety, preprocess_logits_for_metrics=argmax)
            utility = dataclasses.replace(utility, preprocess_logits_for_metrics=argmax)
        return cls(
            model_args,
            data_args,
            warp_args,
            training_args,
            tokenizer,
            safety,
            utility,
            labels,
            safety_classes,
            utility_classes,
            ood,
        )

    @classmethod
    def from_dir(cls, run_dir: str | Path, **training_overrides) -> WarpRun:
        """Rebuild a run from its ``config.json`` (for verification and evaluation after the fact)."""
        path = WarpLayout(run_dir).config
        seeds = sorted(p.name for p in Path(run_dir).glob("seed-*") if p.is_dir())
        if not path.is_file() and seeds:
            raise RunDirectoryError(
                f"{run_dir} holds the runs of several seeds ({', '.join(seeds)}): name one of them, e.g. "
                f"{Path(run_dir) / seeds[0]}"
            )
        if not path.is_file():
            raise RunDirectoryError(
                f"{path} not found: {run_dir} is not the output_dir of a WaRP run, or no phase of it has finished"
            )
        saved = read_json(path)
        if not isinstance(saved, dict) or not {"model", "data", "warp", "seed"} <= set(saved):
            raise RunDirectoryError(f"{path} is not the record of a WaRP run (no model/data/warp/seed keys)")
        training_args = TrainingArguments(
            output_dir=str(run_dir),
            report_to=[],
            seed=saved["seed"],
            per_device_eval_batch_size=saved["eval_batch_size"],
            **({"learning_rate": saved["learning_rate"]} if "learning_rate" in saved else {}),  # names the arms
            **training_overrides,
        )
        model_args, data_args = ModelArguments(**saved["model"]), DataArguments(**saved["data"])
        return cls.build(model_args, data_args, WarpArguments(**saved["warp"]), training_args, check_output=False)

    def seed_runs(self) -> list[WarpRun]:
        """This run once per seed (``warp_args.seeds``), each in its own directory; itself with one seed."""
        roots = seed_roots(self.warp_args, self.training_args)
        if len(roots) == 1:
            return [self]
        return [
            dataclasses.replace(
                self,
                warp_args=dataclasses.replace(self.warp_args, seeds=1),
                training_args=dataclasses.replace(self.training_args, output_dir=str(root), seed=seed),
            )
            for seed, root in roots.items()
        ]

    def config_record(self) -> dict[str, Any]:
        """The arguments that produced the run's files (``config.json``, and each phase's metadata)."""
        return {
            "model": dataclasses.asdict(self.model_args),
            "data": dataclasses.asdict(self.data_args),
            "warp": dataclasses.asdict(self.warp_args),
            "seed": self.training_args.seed,
            "eval_batch_size": self.training_args.per_device_eval_batch_size,
            "learning_rate": self.training_args.learning_rate,
            "hf_ext_version": __version__,
        }

    def save_config(self) -> None:
        """Write ``config.json``; called once a phase has succeeded, so a failed invocation leaves it as it was."""
        if distributed.is_main_process():
            write_json(self.layout.config, self.config_record())

    def load_model(self, phase: str | None = None) -> PreTrainedModel:
        """The base model (``phase=None``), phase 2's model, or an arm's: its full model if it was saved, else
        phase 2's model with the arm's ``delta.safetensors`` applied; on the training device."""
        args = self.model_args
        delta = None
        if phase is not None:
            path = self.layout.model(phase)
            if not path.is_dir() and phase != "phase2" and self.layout.delta(phase).is_file():
                path, delta = self.layout.model("phase2"), self.layout.delta(phase)
            if not path.is_dir():
                raise RunDirectoryError(f"{path} not found: run {phase} first")
            args = dataclasses.replace(args, model_name_or_path=str(path))
        head_seed = self.warp_args.head_seed
        seed = self.training_args.seed if head_seed is None else head_seed  # initialises the new head
        model = load_model(args, self.tokenizer, self.labels, seed=seed)
        if delta is not None:
            apply_delta(model, delta)
        return model.to(self.training_args.device)

    @property
    def arms(self) -> list[Arm]:
        """The utility fine-tunes after phase 2 (:mod:`hf_ext.warp.arms`)."""
        return study_arms(self.warp_args, self.training_args.learning_rate)

    def targets(self, model) -> dict[str, torch.nn.Linear]:
        return select_linear(model, self.warp_args.targets, layers=self.warp_args.layers)


def safety_data_args(data_args: DataArguments, warp_args: WarpArguments) -> DataArguments:
    """The data arguments of the safety task: the utility task's, with the safety dataset or files."""
    return dataclasses.replace(
        data_args,
        dataset_name=warp_args.safety_dataset_name,
        dataset_config_name=None,
        train_file=warp_args.safety_train_file,
        validation_file=warp_args.safety_validation_file,
        test_file=warp_args.safety_test_file,
    )


def seed_roots(warp_args: WarpArguments, training_args: TrainingArguments) -> dict[int, Path]:
    """``{seed: run directory}``: ``output_dir`` itself with one seed, else ``output_dir/seed-<seed>``."""
    layout = WarpLayout(training_args.output_dir)
    if warp_args.seeds == 1:
        return {training_args.seed: layout.root}
    return {training_args.seed + k: layout.seed_dir(training_args.seed + k) for k in range(warp_args.seeds)}


def phase_steps(warp_args: WarpArguments, learning_rate: float, phase=None) -> list[str]:
    """The run subdirectories ``phase`` (default: the configured one) writes, in order."""
    arms = study_arms(warp_args, learning_rate)
    masked = [arm.name for arm in arms if arm.kind == "masked"]
    plain = [arm.name for arm in arms if arm.kind != "masked"]
    steps = {1: ["phase1"], 2: ["phase2"], 3: masked, "plain": plain, "eval": []}
    steps["all"] = ["phase1", "phase2", *masked, *plain]
    return steps[warp_args.phase if phase is None else phase]


def _shift_labels(data: PreparedData, offset: int) -> PreparedData:
    shift = lambda batch: {"labels": [label + offset for label in batch["labels"]]}  # noqa: E731
    splits = {name: getattr(data, name) for name in ("train", "validation", "test")}
    shifted = {name: split.map(shift, batched=True) if split is not None else None for name, split in splits.items()}
    return dataclasses.replace(data, **shifted)


def _argmax_within_label_task(groups: list[list[int]]):
    """``preprocess_logits_for_metrics``: each example's prediction is the argmax over the classes of the
    task its label belongs to, so one Trainer evaluates the safety and the utility data side by side."""
    size = sum(len(g) for g in groups)
    same_task = torch.zeros(size, size, dtype=torch.bool)
    for group in groups:
        same_task[torch.tensor(group)[:, None], torch.tensor(group)[None, :]] = True

    def argmax_within_task(logits, labels):
        logits = logits[0] if isinstance(logits, tuple) else logits
        allowed = same_task.to(logits.device)[labels]
        return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min).argmax(-1)

    return argmax_within_task


def load_basis(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """``(U per module, eigenvalues per module, metadata)`` from ``phase1/basis.safetensors``."""
    path = WarpLayout(run_dir).basis
    if not path.is_file():
        raise RunDirectoryError(f"{path} not found: run phase 1 first")
    tensors, metadata = load_tensors(path)
    bases = {key[: -len(".U")]: t for key, t in tensors.items() if key.endswith(".U")}
    eigenvalues = {key[: -len(".eigenvalues")]: t for key, t in tensors.items() if key.endswith(".eigenvalues")}
    return bases, eigenvalues, metadata


def load_masks(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """``{module name: bool mask}`` (True = frozen) from ``phase2/masks.safetensors``."""
    path = WarpLayout(run_dir).masks
    if not path.is_file():
        raise RunDirectoryError(f"{path} not found: run phase 2 first")
    return load_tensors(path)[0]
