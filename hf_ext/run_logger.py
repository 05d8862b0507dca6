"""Log from callbacks into the Trainer's own run: scalars via ``Trainer.log``, figures to its TensorBoard.

Scalars go through the Trainer so they land in ``state.log_history``, the console and every
``report_to`` integration at the right global step. Figures, histograms and images go to the
SummaryWriter of transformers' ``TensorBoardCallback``, so they sit in the same TensorBoard run
as the loss curve; without ``report_to: ["tensorboard"]`` they are skipped with one warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from . import distributed
from .tracking import run_location_lines

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)


class RunLogger:
    """Logging handle for one Trainer, usable from callbacks and from code after training."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self._own_writer = None
        self._warned = False

    def scalars(self, values: Mapping[str, float], *, now: bool = False) -> None:
        """Log scalars. By default they are averaged into the Trainer's next periodic log (an
        :class:`~hf_ext.trainer.HfExtTrainer`); ``now=True`` (or a plain Trainer) logs them at once."""
        values = {k: float(v) for k, v in values.items()}
        record = getattr(self.trainer, "record_metrics", None)
        if now or record is None:
            self.trainer.log(values)
        else:
            record(values)

    @property
    def step(self) -> int:
        return self.trainer.state.global_step

    def _tensorboard_callback(self) -> TensorBoardCallback | None:
        return next((c for c in self.trainer.callback_handler.callbacks if isinstance(c, TensorBoardCallback)), None)

    def writer(self):
        """The run's SummaryWriter on the main process, else ``None``."""
        if not self.trainer.is_world_process_zero():
            return None
        callback = self._tensorboard_callback()
        if callback is None:
            if not self._warned:
                logger.warning("figures and histograms are not logged: add 'tensorboard' to report_to")
                self._warned = True
            return None
        if callback.tb_writer is not None:
            return callback.tb_writer
        # Before training starts or after it ends the callback holds no writer: open one on the same
        # run directory (fixing that directory now if training has not chosen it yet).
        if callback.logging_dir is None:
            callback.logging_dir = os.path.join(self.trainer.args.output_dir, default_logdir())
        if self._own_writer is None:
            self._own_writer = SummaryWriter(log_dir=callback.logging_dir)
        return self._own_writer

    @property
    def logging_dir(self) -> str | None:
        """The TensorBoard run directory, once known."""
        callback = self._tensorboard_callback()
        return None if callback is None else callback.logging_dir

    def histogram(self, tag: str, values: torch.Tensor | np.ndarray, step: int | None = None) -> None:
        writer = self.writer()
        if writer is not None:
            data = values.detach().float().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
            writer.add_histogram(tag, data, self.step if step is None else step)
            writer.flush()

    def figure(self, tag: str, figure: Any, step: int | None = None) -> None:
        """Log a matplotlib figure; it is closed afterwards, logged or not."""
        writer = self.writer()
        if writer is None:
            import matplotlib.pyplot as plt

            plt.close(figure)
            return
        writer.add_figure(tag, figure, self.step if step is None else step, close=True)
        writer.flush()

    def text(self, tag: str, text: str, step: int | None = None) -> None:
        writer = self.writer()
        if writer is not None:
            writer.add_text(tag, text, self.step if step is None else step)
            writer.flush()

    def close(self) -> None:
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None


class LoggingCallback(TrainerCallback):
    """Base for hf_ext callbacks: :class:`~hf_ext.trainer.HfExtTrainer` calls :meth:`bind` so the
    callback can log through ``self.run_logger``. With a plain Trainer, call ``callback.bind(trainer)``."""

    trainer: Trainer | None = None
    run_logger: RunLogger | None = None
    reads: str | None = None
    """``"weights"`` or ``"gradients"`` if the callback reads them whole: binding then refuses the sharded
    launchers that split them (:func:`hf_ext.distributed.check_launcher`)."""

    def bind(self, trainer: Trainer) -> None:
        if self.reads is not None:
            distributed.check_launcher(trainer.args, type(self).__name__, self.reads)
        self.trainer = trainer
        self.run_logger = RunLogger(trainer)

    def _require_bound(self) -> RunLogger:
        if self.run_logger is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to a Trainer: use "
                "hf_ext.HfExtTrainer, or call callback.bind(trainer)"
            )
        return self.run_logger


def print_run_locations(trainer: Trainer, **extra: str) -> None:
    """Print where a run's outputs, TensorBoard logs and MLflow run are (main process only)."""
    if not trainer.is_world_process_zero():
        return
    lines = [f"outputs:     {os.path.abspath(trainer.args.output_dir)}"]
    lines += [f"{name + ':':<12} {os.path.abspath(path)}" for name, path in extra.items()]
    logging_dir = RunLogger(trainer).logging_dir
    if logging_dir:
        lines.append(f"tensorboard: tensorboard --logdir {os.path.abspath(logging_dir)}")
    lines += run_location_lines(trainer)
    print("\n".join(lines), flush=True)
