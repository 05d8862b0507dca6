"""TrainerCallbacks that put importance accumulation, exact masked updates and coefficient drift into training.

The gradient readers are :class:`~hf_ext.trainer.GradientCallback`s: they need
:class:`~hf_ext.trainer.HfExtTrainer`, which calls ``on_gradients_ready`` with complete, unclipped
gradients once per optimizer step, and they refuse DeepSpeed and FSDP when bound. Each callback
wraps one object from :mod:`hf_ext.warp.importance` or :mod:`hf_ext.warp.masking`, so the same logic
runs without a Trainer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..io import load_tensors, save_tensors
from ..run_logger import LoggingCallback
from ..trainer import GradientCallback, checkpoint_dir
from .importance import ImportanceAccumulator
from .leaf import LeafReparameterization
from .masking import MaskedUpdate

IMPORTANCE_STATE_FILE = "importance_state.safetensors"


class ImportanceCallback(GradientCallback):
    """Accumulate gradient importance every optimizer step; log mean/std/max per tensor and histograms.

    The accumulator's state is saved in each checkpoint and restored on resume.
    """

    def __init__(self, accumulator: ImportanceAccumulator, *, prefix: str = "importance"):
        self.accumulator = accumulator
        self.prefix = prefix

    def on_train_begin(self, args, state, control, **kwargs):
        self.accumulator.loss_divisor = float(args.gradient_accumulation_steps)  # the Trainer's loss division
        if state.global_step > 0:
            path = os.path.join(checkpoint_dir(args, state), IMPORTANCE_STATE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"resuming at step {state.global_step} but {path} is "
                    "missing: the importance so far cannot be recovered"
                )
            tensors, _ = load_tensors(path, device=next(iter(self.accumulator.sums.values())).device)
            self.accumulator.load_state_dict(tensors)

    def on_gradients_ready(self, args, state, control, *, grad_scale=1.0, **kwargs):
        self.accumulator.update(grad_scale)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log and self.accumulator.steps:
            logger = self._require_bound()
            values = {}
            for name, score in self.accumulator.mean(across_ranks=False).items():  # this rank's, for the log
                values |= {
                    f"{self.prefix}/{name}/mean": score.mean(),
                    f"{self.prefix}/{name}/std": score.std(),
                    f"{self.prefix}/{name}/max": score.max(),
                }
            values[f"{self.prefix}/skipped_steps"] = self.accumulator.skipped_steps
            logger.scalars({k: float(v) for k, v in values.items()})

    def on_save(self, args, state, control, **kwargs):
        self.accumulator.gather_()  # every rank: rank 0 then holds all micro-batch sums
        if state.is_world_process_zero:
            save_tensors(
                os.path.join(checkpoint_dir(args, state), IMPORTANCE_STATE_FILE), self.accumulator.state_dict()
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.accumulator.steps:
            logger = self._require_bound()
            for name, score in self.accumulator.mean().items():
                logger.histogram(f"{self.prefix}/{name}", score)


class MaskedUpdateCallback(GradientCallback):
    """Keep masked entries bit-identical: zero their gradients before clipping, restore them after each step."""

    def __init__(self, masked_update: MaskedUpdate):
        self.masked_update = masked_update

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.masked_update.unchanged():
            deviation = max(self.masked_update.max_deviation().values())
            raise RuntimeError(
                f"frozen entries differ from their snapshot by up to {deviation:.3g} before training: the model "
                "(or the checkpoint resumed from) does not come from the weights the masks were built for"
            )

    def on_gradients_ready(self, args, state, control, **kwargs):
        self.masked_update.zero_frozen_grads_()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.masked_update.restore_()


class CoefficientDriftCallback(LoggingCallback):
    """Log ``||C - C_0||`` per tensor at each logging step, for frozen and trainable entries separately.

    ``C_0`` is copied to the CPU at construction. Without masks only the total drift is logged.
    """

    reads = "weights"

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
        *,
        prefix: str = "drift",
    ):
        self.params = dict(params)
        self.initial = {name: p.detach().to("cpu", copy=True) for name, p in self.params.items()}
        self.masks = {name: m.detach().to(torch.bool) for name, m in (masks or {}).items()}
        self.prefix = prefix

    @torch.no_grad()
    def drift(self) -> dict[str, float]:
        values = {}
        for name, param in self.params.items():
            delta = param.detach().float() - self.initial[name].to(param.device, torch.float32)
            total = delta.norm().item()
            mask = self.masks.get(name)
            if mask is None:
                values[f"{self.prefix}/{name}/all"] = total
                continue
            mask = mask.to(param.device).expand_as(delta)
            frozen = delta[mask].norm().item()
            values[f"{self.prefix}/{name}/frozen"] = frozen
            values[f"{self.prefix}/{name}/trainable"] = delta[~mask].norm().item()
        return values

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log:
            self._require_bound().scalars(self.drift())


class LeafWeightCallback(GradientCallback):
    """Phase 3 through :class:`~hf_ext.warp.leaf.LeafReparameterization`: project ``W``'s gradient onto the
    coefficients once per optimizer step, then (with a :class:`MaskedUpdate`) zero the frozen ones before
    clipping; restore the frozen entries after the step and form ``W`` again before anything reads it."""

    def __init__(self, leaf: LeafReparameterization, masked_update: MaskedUpdate | None = None):
        self.leaf = leaf
        self.masked = MaskedUpdateCallback(masked_update) if masked_update is not None else None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.masked is not None:
            self.masked.on_train_begin(args, state, control, **kwargs)

    def on_gradients_ready(self, args, state, control, **kwargs):
        self.leaf.project_grads_()
        if self.masked is not None:
            self.masked.on_gradients_ready(args, state, control, **kwargs)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.masked is not None:
            self.masked.on_optimizer_step(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        self.leaf.form_weights_()
