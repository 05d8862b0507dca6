"""TrainerCallbacks that put importance accumulation, exact masked updates and coefficient drift into training.

They need :class:`~hf_ext.trainer.HfExtTrainer`, which calls ``on_gradients_ready`` with complete,
unclipped gradients once per optimizer step. Each callback wraps one object from
:mod:`hf_ext.importance` or :mod:`hf_ext.masking`, so the same logic runs without a Trainer.
Supported: one device or DDP. DeepSpeed steps the optimizer inside ``backward`` and FSDP shards
gradients, so both are refused with an error rather than measured wrongly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .importance import ImportanceAccumulator
from .io import load_tensors, save_tensors
from .masking import MaskedUpdate
from .run_logger import LoggingCallback

IMPORTANCE_STATE_FILE = "importance_state.safetensors"


def _require_gradient_access(callback: LoggingCallback) -> None:
    trainer = callback.trainer
    if trainer is None or not hasattr(trainer, "gradient_scale"):
        raise RuntimeError(f"{type(callback).__name__} needs hf_ext.HfExtTrainer (it reads gradients before clipping)")
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        raise ValueError(
            f"{type(callback).__name__} cannot run under DeepSpeed (it steps the optimizer inside backward) or FSDP "
            "(it shards gradients); launch with accelerate_configs/single_gpu.yaml or multi_gpu.yaml (DDP)."
        )


def _checkpoint_dir(args, state) -> str:
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class ImportanceCallback(LoggingCallback):
    """Accumulate gradient importance every optimizer step; log mean/std/max per tensor and histograms.

    The accumulator's state is saved in each checkpoint and restored on resume.
    """

    def __init__(self, accumulator: ImportanceAccumulator, *, prefix: str = "importance"):
        self.accumulator = accumulator
        self.prefix = prefix

    def on_train_begin(self, args, state, control, **kwargs):
        _require_gradient_access(self)
        if state.global_step > 0:
            path = os.path.join(_checkpoint_dir(args, state), IMPORTANCE_STATE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"resuming at step {state.global_step} but {path} is missing: the importance so far cannot be recovered"
                )
            tensors, _ = load_tensors(path, device=next(iter(self.accumulator.sums.values())).device)
            self.accumulator.load_state_dict(tensors)

    def on_gradients_ready(self, args, state, control, grad_scale=1.0, **kwargs):
        self.accumulator.update(grad_scale)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log and self.accumulator.steps:
            logger = self._require_bound()
            values = {}
            for name, score in self.accumulator.mean().items():
                values |= {f"{self.prefix}/{name}/mean": score.mean(), f"{self.prefix}/{name}/std": score.std(),
                           f"{self.prefix}/{name}/max": score.max()}
            values[f"{self.prefix}/skipped_steps"] = self.accumulator.skipped_steps
            logger.scalars({k: float(v) for k, v in values.items()})

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_tensors(os.path.join(_checkpoint_dir(args, state), IMPORTANCE_STATE_FILE), self.accumulator.state_dict())

    def on_train_end(self, args, state, control, **kwargs):
        if self.accumulator.steps:
            logger = self._require_bound()
            for name, score in self.accumulator.mean().items():
                logger.histogram(f"{self.prefix}/{name}", score)


class MaskedUpdateCallback(LoggingCallback):
    """Keep masked entries bit-identical: zero their gradients before clipping, restore them after each step."""

    def __init__(self, masked_update: MaskedUpdate):
        self.masked_update = masked_update

    def on_train_begin(self, args, state, control, **kwargs):
        _require_gradient_access(self)
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

    def __init__(self, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None,
                 *, prefix: str = "drift"):
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


class HeadImportanceCallback(LoggingCallback):
    """Every ``every`` optimizer steps, log gradient head importance on fixed ``batches``: one scalar
    per layer (mean over its heads) and a layer x head heatmap image."""

    def __init__(self, batches, *, every: int, prefix: str = "head_importance"):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.batches, self.every, self.prefix = batches, every, prefix

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        from .head_importance import gradient_importance

        logger = self._require_bound()
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        result = gradient_importance(model, self.batches, progress=False)
        logger.scalars({f"{self.prefix}/layer_{layer}": float(row.mean()) for layer, row in enumerate(result.gradient)})
        if logger.writer() is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 3.5))
            image = ax.imshow(result.gradient.numpy(), aspect="auto")
            ax.set(xlabel="head", ylabel="layer", title=f"gradient head importance, step {state.global_step}")
            fig.colorbar(image, ax=ax)
            logger.figure(f"{self.prefix}/heatmap", fig)
