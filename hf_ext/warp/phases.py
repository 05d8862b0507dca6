"""The phases of a WaRP run (:class:`~hf_ext.warp.run.WarpRun`), each writing its subdirectory:

- :func:`run_phase1`: eigenbasis of each target layer's inputs over the basis data (``phase1/``);
- :func:`run_phase2`: safety fine-tune of the coefficients ``C = W @ U`` with importance accumulation, masks
  freezing the ``keep_ratio`` most important share, and the model merged back (``phase2/``);
- :func:`run_arm`: one utility fine-tune from the phase-2 model (:mod:`hf_ext.warp.arms`): masked (phase 3
  and its control masks), plain or full baselines (``<arm.name>/``).

A later phase refuses to run with arguments that change what an earlier one computed.
"""

from __future__ import annotations

import dataclasses
import time
from itertools import islice

import torch
from torch.utils.data import DataLoader

from .. import distributed
from ..activations import compute_bases
from ..errors import ConfigError, RunDirectoryError
from ..io import file_sha256, load_tensors, read_json, save_tensors, write_json
from ..models import CLASSIFIER_HEADS, classifier_head
from ..outputs import tensorboard_writer
from ..run_logger import RunLogger, print_run_locations
from ..targets import set_trainable
from ..trainer import HfExtTrainer
from . import lineage
from .arms import Arm, control_masks, layout_masks
from .callbacks import CoefficientDriftCallback, ImportanceCallback, LeafWeightCallback
from .delta import save_delta
from .head import head_outputs, set_prototype_rows
from .importance import importance_after_training, importance_vs_eigenvalues, make_accumulator
from .leaf import LeafReparameterization
from .masking import MaskedUpdate, mask_overlap
from .reparam import coefficient_parameters, merge_model, reparameterize
from .run import Task, WarpRun, load_basis, load_masks


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
    ("warp", "head"),
    ("warp", "head_seed"),
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
    head = classifier_head(model)
    prototypes = run.uses_prototypes
    head_params = list(head.parameters()) if prototypes else []
    trainable = set_trainable(model, [*params.values(), *head_params], warp.extra_trainable)
    granularity = warp.importance_granularity
    accumulator = make_accumulator(
        modules, kind=warp.importance, granularity=granularity, statistic=warp.importance_statistic
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
    layout = f"{warp.granularity}/{warp.threshold}"
    masks, info = layout_masks(importance, warp.keep_ratio, layout)
    during_training = {}
    if warp.importance_pass == "after_training":
        during_masks = masks
        after = importance_after_training(  # the head stays in training mode: its class restriction applies there
            model,
            params,
            trainer.get_train_dataloader(),
            kind=warp.importance,
            granularity=granularity,
            keep_training=[head] if head is not None else [],
            modules=modules,
        )
        importance = after.mean()
        masks, info = layout_masks(importance, warp.keep_ratio, layout)
        during_training = {"mask_overlap_with_during_training": mask_overlap(masks, during_masks)}
    metadata = {
        **info.to_json(),
        "importance_pass": warp.importance_pass,
        **during_training,
        "importance_vs_eigenvalue": importance_vs_eigenvalues(importance, load_basis(run.dir)[1], warp.keep_ratio),
        "granularity": warp.granularity,
        "importance_granularity": granularity,
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
    if prototypes:
        metadata["prototypes"] = _set_utility_prototypes(run, model)
    trainer.save_model(str(run.layout.model("phase2")))
    if distributed.is_main_process():
        save_delta(model, run.layout.delta("phase2"), {"phase": "phase2"})
        save_tensors(
            run.layout.importance,
            importance,
            {
                "kind": warp.importance,
                "statistic": warp.importance_statistic,
                "granularity": granularity,
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


def _set_utility_prototypes(run: WarpRun, model) -> dict:
    """Set the utility rows of the merged phase-2 model's head to the utility classes' mean features on the
    utility training data (:func:`~hf_ext.warp.head.set_prototype_rows`); saved in ``phase2/prototypes``."""
    data = run.utility
    loader = DataLoader(data.train, batch_size=run.training_args.per_device_eval_batch_size, collate_fn=data.collator)
    outputs = head_outputs(model, loader)
    classes = run.classes("utility")
    prototypes = set_prototype_rows(classifier_head(model), outputs["features"], outputs["labels"], classes)
    if distributed.is_main_process():
        save_tensors(run.layout.prototypes, {"prototypes": prototypes}, {"classes": classes})
    return {"classes": classes, "examples": len(data.train), "mean_norm": float(prototypes.norm(dim=1).mean())}


def _check_importance_granularity(run: WarpRun) -> None:
    """Element masks are read from element-wise importance; an input-only phase 2 cannot give them."""
    accumulated = read_json(run.layout.metadata("phase2")).get("importance_granularity", run.warp_args.granularity)
    element = sorted({a.layout for a in run.arms if a.layout and a.layout.startswith("element")})
    if accumulated == "input" and element:
        raise ConfigError(
            f"mask_layouts {element} need element-wise importance, and phase 2 accumulated it per input direction: "
            "rerun phase 2 with those layouts in mask_layouts (it then keeps element-wise importance)"
        )


def _arm_masks(run: WarpRun, arm: Arm) -> dict[str, torch.Tensor]:
    """The masks of a masked arm: phase 2's, the importance masks of another keep_ratio or layout (from phase 2's
    importance), or a control with as many frozen entries per layer; those not phase 2's are saved in the arm's
    directory."""
    warp = run.warp_args
    own = arm.keep_ratio is not None and (arm.keep_ratio, arm.layout) != (
        warp.keep_ratio,
        f"{warp.granularity}/{warp.threshold}",
    )
    masks = (
        layout_masks(load_tensors(run.layout.importance)[0], arm.keep_ratio, arm.layout)[0]
        if own
        else load_masks(run.dir)
    )
    description = {"keep_ratio": str(arm.keep_ratio), "layout": str(arm.layout)}
    if arm.masks != "importance":
        masks = control_masks(arm.masks, masks, load_basis(run.dir)[1], seed=run.training_args.seed)
        description |= {"control": arm.masks}
    if (own or arm.masks != "importance") and distributed.is_main_process():
        save_tensors(run.layout.arm_masks(arm.name), masks, description)
    return masks


def run_arm(run: WarpRun, arm: Arm) -> dict:
    """One utility fine-tune from the phase-2 model (:mod:`hf_ext.warp.arms`); writes ``<arm.name>/``.

    A masked arm trains the coefficients through :class:`~hf_ext.warp.leaf.LeafReparameterization`
    (``W`` formed once per optimizer step), its masks' entries kept bit-identical."""
    if not run.layout.basis.is_file():
        raise RunDirectoryError(f"{run.layout.basis} not found: run phases 1 and 2 first")
    if not run.layout.metadata("phase2").is_file():
        raise RunDirectoryError(f"{run.layout.metadata('phase2')} not found: run phase 2 first")
    _check_same_arguments(run, "phase2", _PHASE2_KEYS)
    _check_importance_granularity(run)
    inputs = lineage.check_inputs(run.layout, arm.lineage)  # before anything is trained or written
    model = run.load_model("phase2")
    targets = run.targets(model)
    extra = run.warp_args.extra_trainable
    head = classifier_head(model) if run.uses_prototypes else None
    frozen_head = {id(p) for p in head.parameters()} if head is not None else set()
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
        everything = [p for p in model.parameters() if id(p) not in frozen_head]  # the prototype head stays frozen
        trainable = set_trainable(model, everything if arm.kind == "full" else params.values(), extra)
    overrides = {} if arm.learning_rate is None else {"learning_rate": arm.learning_rate}
    if run.warp_args.arm_optim is not None:
        overrides["optim"] = run.warp_args.arm_optim
    trainer = _trainer(run, model, arm.name, "utility", callbacks, **overrides)
    result = trainer.train(resume_from_checkpoint=_resume(run, 3 if arm.kind == "masked" else "plain"))
    metadata = {
        "arm": dataclasses.asdict(arm) | {"label": arm.label},
        "learning_rate": trainer.args.learning_rate,
        "optim": getattr(trainer.args.optim, "value", trainer.args.optim),
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
