"""The Trainer subclass that hf_ext's callbacks and techniques compose into."""

from __future__ import annotations

from collections import defaultdict

from transformers import Trainer, TrainerCallback
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


class HfExtTrainer(Trainer):
    """A ``transformers.Trainer`` that its callbacks can log through.

    - Callbacks with a ``bind(trainer)`` method (every :class:`~hf_ext.run_logger.LoggingCallback`)
      are bound when the trainer is built or when they are added later.
    - Callbacks with an ``on_gradients_ready(args, state, control, model=..., grad_scale=...)``
      method are called once per optimizer step when the gradients are complete (accumulated and,
      under DDP, averaged) but not yet clipped; ``grad_scale`` is the fp16 loss scale still in
      them (1.0 otherwise). The Trainer's own ``on_pre_optimizer_step`` sees clipped gradients.
    - :meth:`record_metrics` collects scalars between logging steps; they are averaged and merged
      into the next training log, so they reach TensorBoard at the same step as the loss.
    - The loss of a model whose loss ignores ``num_items_in_batch`` (sequence classification) is
      scaled as a per-batch mean. transformers 5 passes the item count to any model whose
      ``forward`` takes ``**kwargs`` and then skips the division by gradient-accumulation steps and
      multiplies by the number of processes, which doubles such a model's loss and gradients with
      two processes or two accumulation steps.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model_accepts_loss_kwargs and not _loss_normalises_by_item_count(self.accelerator.unwrap_model(self.model)):
            self.model_accepts_loss_kwargs = False
        self._recorded: dict[str, list[float]] = defaultdict(list)
        for callback in self.callback_handler.callbacks:
            self._bind(callback)

    def _bind(self, callback: TrainerCallback) -> None:
        bind = getattr(callback, "bind", None)
        if callable(bind) and not isinstance(callback, type):
            bind(self)

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        super().add_callback(callback)
        self._bind(self.callback_handler.callbacks[-1])

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            scale = self.gradient_scale()
            for callback in self.callback_handler.callbacks:
                hook = getattr(callback, "on_gradients_ready", None)
                if hook is not None:
                    hook(self.args, self.state, self.control, model=model, grad_scale=scale)
        return loss

    def gradient_scale(self) -> float:
        """The loss scale the gradients carry before clipping unscales them (fp16 on CUDA), else 1.0."""
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def record_metrics(self, metrics: dict[str, float]) -> None:
        """Queue scalars for the next training log (averaged if recorded several times)."""
        for name, value in metrics.items():
            self._recorded[name].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_eval = any(key.startswith(("eval_", "test_")) for key in logs)
        if self._recorded and not is_eval:
            logs = {**logs, **{name: sum(v) / len(v) for name, v in self._recorded.items()}}
            self._recorded.clear()
        super().log(logs, start_time)


def _loss_normalises_by_item_count(model) -> bool:
    """True for causal LMs, whose loss divides a token sum by ``num_items_in_batch`` when given."""
    base = getattr(model, "get_base_model", lambda: model)()
    return type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
