"""A TrainerCallback that logs gradient head importance on fixed batches during training."""

from __future__ import annotations

from ..plotting import has_matplotlib, require_pyplot
from ..run_logger import LoggingCallback
from .importance import gradient_importance


class HeadImportanceCallback(LoggingCallback):
    """Every ``every`` optimizer steps, log gradient head importance on fixed ``batches``: one scalar
    per layer (mean over its heads) and a layer x head heatmap image."""

    reads = "weights"

    def __init__(self, batches, *, every: int, prefix: str = "head_importance"):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.batches, self.every, self.prefix = batches, every, prefix

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:
            return
        logger = self._require_bound()
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        result = gradient_importance(model, self.batches, progress=False)
        logger.scalars(
            {f"{self.prefix}/layer_{layer}": float(row.mean()) for layer, row in enumerate(result.gradient)}
        )
        if logger.writer() is not None and has_matplotlib():  # the scalars above are logged either way
            fig, ax = require_pyplot().subplots(figsize=(5, 3.5))
            image = ax.imshow(result.gradient.numpy(), aspect="auto")
            ax.set(xlabel="head", ylabel="layer", title=f"gradient head importance, step {state.global_step}")
            fig.colorbar(image, ax=ax)
            logger.figure(f"{self.prefix}/heatmap", fig)
