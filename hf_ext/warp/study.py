"""The three-phase WaRP study: learn safety in a rotated basis, then fine-tune for utility without
moving the coefficients that mattered for safety.

1. basis: eigenbasis of each target layer's inputs over the basis data (the safety data by default);
2. safety fine-tune of the coefficients ``C = W @ U`` while accumulating their gradient importance,
   then masks freezing the ``keep_ratio`` most important share, and the model merged back;
3. utility fine-tune from the phase-2 model with the masks (``phase: 3``), or without masks and
   without reparameterization as the baseline (``phase: "plain"``, same data, steps and lr);
then held-out scores of the three models (``phase: "eval"``). ``phase: "all"`` runs everything.
The files of a run are listed in :mod:`hf_ext.warp.layout`.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, TrainingArguments

from .. import distributed
from ..activations import compute_bases
from ..config import DataArguments, ModelArguments
from ..data import PreparedData, prepare_data, uses_chat_template
from ..errors import ConfigError, RunDirectoryError
from ..evaluation import classification_accuracy, first_word_accuracy, generate_responses, refusal_accuracy
from ..io import file_sha256, load_tensors, read_json, save_tensors, write_json
from ..models import CLASSIFIER_HEADS, classifier_head, load_model, load_tokenizer
from ..outputs import check_output_dir, tensorboard_writer
from ..run_logger import RunLogger, print_run_locations
from ..targets import select_linear, set_trainable
from ..tasks import is_refusal
from ..trainer import HfExtTrainer
from ..version import __version__
from . import lineage
from .arms import Arm, control_masks, study_arms
from .callbacks import CoefficientDriftCallback, ImportanceCallback, LeafWeightCallback
from .config import WarpArguments
from .delta import apply_delta, save_delta
from .importance import (
    build_masks,
    importance_after_training,
    importance_vs_eigenvalues,
    make_accumulator,
    mask_overlap,
)
from .layout import PHASE2_LABEL, WarpLayout
from .leaf import LeafReparameterization
from .masking import MaskedUpdate
from .reparam import coefficient_parameters, merge_model, reparameterize
from .summary import format_summary, plot_safety_vs_utility, summarize

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

    @property
    def dir(self) -> Path:
        return Path(self.training_args.output_dir)

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
        safety_args = dataclasses.replace(
            data_args,
            dataset_name=warp_args.safety_dataset_name,
            dataset_config_name=None,
            train_file=warp_args.safety_train_file,
            validation_file=warp_args.safety_validation_file,
            test_file=warp_args.safety_test_file,
        )
        safety = prepare_data(safety_args, tokenizer, model_args.task_type)
        utility = prepare_data(data_args, tokenizer, model_args.task_type)
        labels = safety_classes = utility_classes = None
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
        model = load_model(args, self.tokenizer, self.labels, seed=self.training_args.seed)
        if delta is not None:
            apply_delta(model, delta)
        return model.to(self.training_args.device)

    @property
    def arms(self) -> list[Arm]:
        """The utility fine-tunes after phase 2 (:mod:`hf_ext.warp.arms`)."""
        return study_arms(self.warp_args, self.training_args.learning_rate)

    def targets(self, model) -> dict[str, torch.nn.Linear]:
        return select_linear(model, self.warp_args.targets, layers=self.warp_args.layers)


def seed_roots(warp_args: WarpArguments, training_args: TrainingArguments) -> dict[int, Path]:
    """``{seed: run directory}``: ``output_dir`` itself with one seed, else ``output_dir/seed-<seed>``."""
    layout = WarpLayout(training_args.output_dir)
    if warp_args.seeds == 1:
        return {training_args.seed: layout.root}
    return {training_args.seed + k: layout.seed_dir(training_args.seed + k) for k in range(warp_args.seeds)}


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


def restrict_classes(model: torch.nn.Module, class_ids: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Make a classifier train among ``class_ids`` only: in training mode the other logits are pushed
    to the dtype's minimum by a forward hook on the head, so the model's own cross-entropy ignores them.

    One head holds both tasks' classes side by side; each phase trains on its task's classes and
    leaves the other task's rows of the head without gradient. In eval mode the logits are left
    whole (evaluation picks among a task's classes itself). A second call replaces the first
    restriction instead of stacking on it.
    """
    head = classifier_head(model)
    if head is None:
        raise ConfigError(
            f"no classifier head found on {type(model).__name__} (looked for {', '.join(CLASSIFIER_HEADS)})"
        )
    others = torch.ones(head.out_features, dtype=torch.bool)
    others[class_ids] = False

    def mask_other_classes(module, inputs, logits):
        if not module.training:
            return logits
        return logits.masked_fill(others.to(logits.device), torch.finfo(logits.dtype).min)

    previous = head.__dict__.pop(_RESTRICTION, None)
    if previous is not None:
        previous.remove()
    handle = head.register_forward_hook(mask_other_classes)
    head.__dict__[_RESTRICTION] = handle
    return handle


_RESTRICTION = "_hf_ext_class_restriction"  # the head's current restrict_classes hook


def _trainer(run: WarpRun, model, phase: str, task: Task, callbacks, **overrides) -> HfExtTrainer:
    """The phase's Trainer: trains on ``task``; evaluates (at ``eval_steps``) on the validation split of
    ``task`` and, after phase 2, of safety too, so the safety retention curve is logged during training."""
    if run.labels is not None:
        restrict_classes(model, run.classes(task))
    args = dataclasses.replace(run.training_args, output_dir=str(run.layout.phase_dir(phase)), **overrides)
    kwargs = run.data(task).trainer_kwargs()
    kwargs["eval_dataset"] = {t: run.data(t).validation for t in dict.fromkeys([task, "safety"])}
    return HfExtTrainer(model=model, args=args, processing_class=run.tokenizer, callbacks=callbacks, **kwargs)


def _resume(run: WarpRun, phase) -> str | bool | None:
    """``resume_from_checkpoint`` applies to the single phase being run, not to 'all'."""
    return run.training_args.resume_from_checkpoint if run.warp_args.phase == phase else None


def load_basis(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """``(U per module, eigenvalues per module, metadata)`` from ``phase1/basis.safetensors``."""
    path = WarpLayout(run_dir).basis
    if not path.is_file():
        raise RunDirectoryError(f"{path} not found: run phase 1 first")
    tensors, metadata = load_tensors(path)
    bases = {key[: -len(".U")]: t for key, t in tensors.items() if key.endswith(".U")}
    eigenvalues = {key[: -len(".eigenvalues")]: t for key, t in tensors.items() if key.endswith(".eigenvalues")}
    return bases, eigenvalues, metadata


def _target_bases(run: WarpRun, model) -> dict[str, torch.Tensor]:
    """The phase-1 basis of each configured target; refused if the targets changed since phase 1."""
    bases, _, _ = load_basis(run.dir)
    modules = run.targets(model)
    if set(modules) != set(bases):
        extra, lacking = sorted(set(bases) - set(modules)), sorted(set(modules) - set(bases))
        found = "; ".join(
            part
            for part in (
                extra and f"the basis holds {extra}, which are no longer targets",
                lacking and f"it has no direction for targets {lacking}",
            )
            if part
        )
        raise RunDirectoryError(f"{found}: targets changed since phase 1; keep phase 1's targets or rerun phase 1")
    return bases


# The arguments whose values a phase's files depend on; a later phase must use the same ones.
_PHASE1_KEYS = (
    ("model", "model_name_or_path"),
    ("model", "task_type"),
    ("warp", "targets"),
    ("warp", "layers"),
    ("warp", "centered"),
    ("warp", "basis_eigh_dtype"),
    ("warp", "basis_data"),
    ("warp", "safety_dataset_name"),
    ("warp", "safety_train_file"),
    ("data", "dataset_name"),
    ("data", "train_file"),
    ("data", "task_seed"),
)
_PHASE2_KEYS = (
    *_PHASE1_KEYS,
    ("warp", "keep_ratio"),
    ("warp", "granularity"),
    ("warp", "threshold"),
    ("warp", "importance"),
    ("warp", "importance_statistic"),
    ("warp", "importance_pass"),
    ("warp", "basis_rank"),
)


def _check_same_arguments(run: WarpRun, earlier: str, keys) -> None:
    """Refuse to continue a run with arguments that change what an earlier phase computed."""
    recorded = (
        read_json(run.layout.metadata(earlier)).get("config") if run.layout.metadata(earlier).is_file() else None
    )
    if recorded is None:
        return
    now = run.config_record()
    changed = [
        f"{key}={now[part][key]!r} (it used {recorded[part].get(key)!r})"
        for part, key in keys
        if recorded[part].get(key) != now[part][key]
    ]
    if changed:
        raise ConfigError(
            f"{earlier} ran with other arguments: {'; '.join(changed)}. Its files depend on them: keep its values, "
            f"or rerun from {earlier} (overwrite_output_dir=true)"
        )


def run_phase1(run: WarpRun) -> dict[str, torch.Tensor]:
    """Eigenbases of the targets' inputs over the basis data; writes ``phase1/``."""
    model = run.load_model()
    modules = run.targets(model)
    data = run.safety if run.warp_args.basis_data == "safety" else run.utility
    loader = DataLoader(data.train, batch_size=run.training_args.per_device_eval_batch_size, collate_fn=data.collator)
    rank, world = distributed.rank(), distributed.world_size()
    start = time.perf_counter()
    bases, eigenvalues, counts = compute_bases(
        model,
        modules,
        lambda: islice(loader, rank, None, world),
        centered=run.warp_args.centered,
        eigh_dtype=getattr(torch, run.warp_args.basis_eigh_dtype),
        memory_gb=run.warp_args.basis_memory_gb,
        progress=distributed.is_main_process(),
        total=len(range(rank, len(loader), world)),
    )
    seconds = time.perf_counter() - start
    if distributed.is_main_process():
        tensors = {}
        for name in bases:
            tensors |= {f"{name}.U": bases[name], f"{name}.eigenvalues": eigenvalues[name]}
        description = {
            "modules": list(bases),
            "tokens": counts,
            "examples": len(data.train),
            "basis_data": run.warp_args.basis_data,
            "centered": run.warp_args.centered,
            "eigh_dtype": run.warp_args.basis_eigh_dtype,
            "model": run.model_args.model_name_or_path,
            "seconds": seconds,
        }
        save_tensors(run.layout.basis, tensors, description)
        write_json(run.layout.metadata("phase1"), description | {"config": run.config_record()})
        _log_spectra(run, eigenvalues)
    distributed.barrier()
    return bases


def _log_spectra(run: WarpRun, eigenvalues: dict[str, torch.Tensor]) -> None:
    """TensorBoard (run ``phase1``): each target's eigenvalue spectrum, ``basis/<module>/log10_eigenvalue``
    against the direction's rank (step), largest first."""
    writer = tensorboard_writer(run.training_args, run.layout.phase_dir("phase1"))
    if writer is None:
        return
    for name, values in eigenvalues.items():
        for index, value in enumerate(values.double().clamp(min=1e-30).log10().tolist()):
            writer.add_scalar(f"basis/{name}/log10_eigenvalue", value, index)
    writer.close()


def run_phase2(run: WarpRun) -> dict:
    """Safety fine-tune of the coefficients with importance accumulation; masks and merged model in ``phase2/``."""
    warp = run.warp_args
    _check_same_arguments(run, "phase1", _PHASE1_KEYS)
    basis_sha256 = file_sha256(run.layout.basis) if run.layout.basis.is_file() else None
    model = run.load_model()
    modules = reparameterize(model, _target_bases(run, model), rank=warp.basis_rank)
    params = coefficient_parameters(modules)
    trainable = set_trainable(model, params.values(), warp.extra_trainable)
    accumulator = make_accumulator(
        modules, kind=warp.importance, granularity=warp.granularity, statistic=warp.importance_statistic
    )
    trainer = _trainer(
        run,
        model,
        "phase2",
        "safety",
        [ImportanceCallback(accumulator), CoefficientDriftCallback(params)],
        learning_rate=warp.safety_lr,
        weight_decay=warp.safety_weight_decay,
        num_train_epochs=warp.safety_epochs,
        max_steps=-1,
    )
    result = trainer.train(resume_from_checkpoint=_resume(run, 2))
    importance = accumulator.mean()
    accumulator.remove_hooks()
    masks, info = build_masks(importance, warp.keep_ratio, warp.threshold)
    during_training = {}
    if warp.importance_pass == "after_training":
        during_masks = masks
        head = classifier_head(model)  # stays in training mode: its class restriction applies there only
        after = importance_after_training(
            model,
            params,
            trainer.get_train_dataloader(),
            kind=warp.importance,
            granularity=warp.granularity,
            keep_training=[head] if head is not None else [],
            modules=modules,
        )
        importance = after.mean()
        masks, info = build_masks(importance, warp.keep_ratio, warp.threshold)
        during_training = {"mask_overlap_with_during_training": mask_overlap(masks, during_masks)}
    metadata = {
        **info.to_json(),
        "importance_pass": warp.importance_pass,
        **during_training,
        "importance_vs_eigenvalue": importance_vs_eigenvalues(importance, load_basis(run.dir)[1], warp.keep_ratio),
        "granularity": warp.granularity,
        "importance": warp.importance,
        "importance_statistic": warp.importance_statistic,
        "steps": accumulator.steps,
        "micro_batches": accumulator.micro_batches,
        "skipped_nonfinite_steps": accumulator.skipped_steps,
        "samples": len(run.safety.train),
        "trainable_parameters": trainable,
        "train_loss": result.training_loss,
        "basis_rank": warp.basis_rank,
        "config": run.config_record(),
    }
    RunLogger(trainer).scalars({f"masks/realised_ratio/{n}": r for n, r in info.realised.items()}, now=True)
    merge_model(model)
    trainer.save_model(str(run.layout.model("phase2")))
    if distributed.is_main_process():
        save_delta(model, run.layout.delta("phase2"), {"phase": "phase2"})
        save_tensors(
            run.layout.importance,
            importance,
            {
                "kind": warp.importance,
                "statistic": warp.importance_statistic,
                "granularity": warp.granularity,
                "steps": accumulator.steps,
                "micro_batches": accumulator.micro_batches,
            },
        )
        save_tensors(
            run.layout.masks,
            masks,
            {"keep_ratio": warp.keep_ratio, "granularity": warp.granularity, "basis_sha256": basis_sha256},
        )
        metadata["lineage"] = lineage.phase2_record(run.layout, basis_sha256)
        write_json(run.layout.metadata("phase2"), metadata)
    distributed.barrier()
    print_run_locations(trainer)
    return metadata


def load_masks(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """``{module name: bool mask}`` (True = frozen) from ``phase2/masks.safetensors``."""
    path = WarpLayout(run_dir).masks
    if not path.is_file():
        raise RunDirectoryError(f"{path} not found: run phase 2 first")
    return load_tensors(path)[0]


def _arm_masks(run: WarpRun, arm: Arm) -> dict[str, torch.Tensor]:
    """The masks of a masked arm: phase 2's, or a control with as many frozen entries per layer (saved in the
    arm's directory)."""
    masks = load_masks(run.dir)
    if arm.masks == "importance":
        return masks
    controls = control_masks(arm.masks, masks, load_basis(run.dir)[1], seed=run.training_args.seed)
    if distributed.is_main_process():
        save_tensors(run.layout.arm_masks(arm.name), controls, {"control": arm.masks, "same_counts_as": "phase2"})
    return controls


def run_arm(run: WarpRun, arm: Arm) -> dict:
    """One utility fine-tune from the phase-2 model (:mod:`hf_ext.warp.arms`); writes ``<arm.name>/``.

    A masked arm trains the coefficients through :class:`~hf_ext.warp.leaf.LeafReparameterization`
    (``W`` formed once per optimizer step), its masks' entries kept bit-identical."""
    if not run.layout.basis.is_file():
        raise RunDirectoryError(f"{run.layout.basis} not found: run phases 1 and 2 first")
    if not run.layout.metadata("phase2").is_file():
        raise RunDirectoryError(f"{run.layout.metadata('phase2')} not found: run phase 2 first")
    _check_same_arguments(run, "phase2", _PHASE2_KEYS)
    inputs = lineage.check_inputs(run.layout, arm.lineage)  # before anything is trained or written
    model = run.load_model("phase2")
    targets = run.targets(model)
    extra = run.warp_args.extra_trainable
    leaf = masks = None
    if arm.kind == "masked":
        masks = _arm_masks(run, arm)
        leaf = LeafReparameterization(model, _target_bases(run, model), rank=run.warp_args.basis_rank, masks=masks)
        params = leaf.coefficients
        masked_update = MaskedUpdate(params, masks)  # checks the masks against the model before anything is written
        callbacks = [LeafWeightCallback(leaf, masked_update), CoefficientDriftCallback(params, masks)]
        # W only carries the gradient to C: it is not counted, and the optimizer never steps it
        trainable = set_trainable(model, [*params.values(), *leaf.weights.values()], extra)
        trainable -= sum(w.numel() for w in leaf.weights.values())
    else:
        params = {name: module.weight for name, module in targets.items()}
        callbacks = [CoefficientDriftCallback(params, prefix="weight_drift")]
        trainable = set_trainable(model, model.parameters() if arm.kind == "full" else params.values(), extra)
    overrides = {} if arm.learning_rate is None else {"learning_rate": arm.learning_rate}
    trainer = _trainer(run, model, arm.name, "utility", callbacks, **overrides)
    result = trainer.train(resume_from_checkpoint=_resume(run, 3 if arm.kind == "masked" else "plain"))
    metadata = {
        "arm": dataclasses.asdict(arm) | {"label": arm.label},
        "learning_rate": trainer.args.learning_rate,
        "steps": trainer.state.global_step,
        "samples": len(run.utility.train),
        "trainable_parameters": trainable,
        "train_loss": result.training_loss,
        "lineage": inputs,
        "config": run.config_record(),
    }
    if leaf is not None:
        metadata |= {
            "frozen_unchanged": masked_update.unchanged(),
            "frozen_max_deviation": masked_update.max_deviation(),
            "frozen_entries": masked_update.frozen_counts,
        }
        if distributed.is_main_process():
            save_tensors(run.layout.arm_coefficients(arm.name), {n: p.detach() for n, p in params.items()})
        leaf.merge()
    if run.warp_args.save_full_models:
        trainer.save_model(str(run.layout.model(arm.name)))
    if distributed.is_main_process():
        save_delta(model, run.layout.delta(arm.name), {"phase": arm.name, "starts_from": "phase2"})
        write_json(run.layout.metadata(arm.name), metadata)
    distributed.barrier()
    print_run_locations(trainer)
    return metadata


def _held_out(data: PreparedData):
    return data.test if data.test is not None else data.validation


def score_model(run: WarpRun, model: PreTrainedModel) -> dict[str, float]:
    """Held-out safety and utility scores (test split, else validation) of one model."""
    batch_size = run.training_args.per_device_eval_batch_size
    scores = {}
    for task in ("safety", "utility"):
        data = run.data(task)
        if run.model_args.task_type == "seq_cls":
            held_out = _held_out(data)
            scores[f"{task}_accuracy"] = classification_accuracy(
                model, held_out, data.collator, run.classes(task), batch_size=batch_size, desc=f"{task} accuracy"
            )
            continue
        raw = data.raw["test"] if "test" in data.raw else data.raw["validation"]
        args = run.data_args
        prompts, references = raw[args.prompt_column], raw[args.response_column]
        responses = generate_responses(
            model,
            run.tokenizer,
            prompts,
            use_chat_template=uses_chat_template(run.tokenizer, args),
            max_new_tokens=run.warp_args.max_new_tokens,
            batch_size=batch_size,
        )
        if task == "safety":
            scores["safety_accuracy"] = refusal_accuracy(responses, [is_refusal(r) for r in references])
        else:
            scores["utility_accuracy"] = first_word_accuracy(responses, references)
    return scores


def evaluate_run(run: WarpRun) -> dict[str, dict[str, float]]:
    """Score phase 2's model and every arm's; writes ``eval.json`` and ``eval.md`` and returns the rows."""
    if not run.layout.model("phase2").is_dir():
        raise RunDirectoryError(f"{run.layout.model('phase2')} not found: nothing to evaluate before phase 2")
    labels = {"phase2": PHASE2_LABEL} | {arm.name: arm.label for arm in run.arms}
    rows = {}
    for name, label in labels.items():
        if run.layout.model(name).is_dir() or (name != "phase2" and run.layout.delta(name).is_file()):
            rows[name] = {"label": label, **score_model(run, run.load_model(name))}
    reference = rows["phase2"]["safety_accuracy"]
    for row in rows.values():
        row["safety_retention"] = row["safety_accuracy"] / reference if reference else float("nan")
    write_json(run.layout.eval_json, rows)
    run.layout.eval_md.write_text(format_table(rows) + "\n", encoding="utf-8")
    writer = tensorboard_writer(run.training_args, run.layout.phase_dir("eval"))
    if writer is not None:
        writer.add_text("eval/held_out", format_table(rows))
        writer.close()
    return rows


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| model | safety accuracy | safety retention | utility accuracy |", "| --- | --- | --- | --- |"]
    for row in rows.values():
        lines.append(
            f"| {row['label']} | {row['safety_accuracy']:.3f} | "
            f"{row['safety_retention']:.3f} | {row['utility_accuracy']:.3f} |"
        )
    return "\n".join(lines)


def phase_steps(warp_args: WarpArguments, learning_rate: float, phase=None) -> list[str]:
    """The run subdirectories ``phase`` (default: the configured one) writes, in order."""
    arms = study_arms(warp_args, learning_rate)
    masked = [arm.name for arm in arms if arm.kind == "masked"]
    plain = [arm.name for arm in arms if arm.kind != "masked"]
    steps = {1: ["phase1"], 2: ["phase2"], 3: masked, "plain": plain, "eval": []}
    steps["all"] = ["phase1", "phase2", *masked, *plain]
    return steps[warp_args.phase if phase is None else phase]


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
    distributed.check_launcher(run.training_args, "WaRP (its importance and masked updates)", "gradients")
    seeds = run.seed_runs()
    rows_by_seed = {}
    for index, seed_run in enumerate(seeds):
        rows = _run_seed(seed_run, first=seeds[0] if index else None)
        if rows is not None:
            rows_by_seed[seed_run.training_args.seed] = rows
    if not rows_by_seed:
        return None
    sizes = {task: len(_held_out(run.data(task))) for task in ("safety", "utility")}
    summary = summarize(rows_by_seed, sizes)
    if len(seeds) > 1:
        write_json(run.layout.eval_json, summary)
        run.layout.eval_md.write_text(format_summary(summary) + "\n", encoding="utf-8")
    plot_safety_vs_utility(summary, run.layout.figure)
    print(
        f"\nWaRP on {run.model_args.model_name_or_path}: held-out scores\n\n{format_summary(summary)}\n\n"
        f"run directory: {run.dir.resolve()}  (check it: hf-ext warp verify --run {run.dir})\n"
        f"figure:        {run.layout.figure.resolve()}\n"
        f"tensorboard:   tensorboard --logdir {run.dir.resolve()}  (one run per phase and arm)",
        flush=True,
    )
    return summary
