"""``LoraNullCallback``: check the freeze when training starts; verify the adapter at init, at every
evaluation and at the end, into TensorBoard through ``Trainer.log``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import distributed
from ..run_logger import LoggingCallback
from ..trainer import CheckpointedHistory
from .init import check_frozen_A
from .verify import summary_scalars, verify_adapter


class LoraNullCallback(CheckpointedHistory, LoggingCallback):
    """Verification metrics (means over layers, ``lora_null/<metric>``) at step 0, each evaluation and the end.

    With ``frozen_A`` it refuses to train unless no ``lora_A`` requires grad, every ``lora_B`` does and the
    optimizer holds no ``lora_A``. :attr:`history` keeps every verification (``{"step", "event", "result"}``);
    it is saved in each checkpoint (``lora_null_history.json``) and restored on resume, so the verification at
    init is the one before any step.
    """

    reads = "weights"
    history_file = "lora_null_history.json"

    def __init__(
        self,
        batches: Sequence[Mapping[str, torch.Tensor]],
        *,
        init: Mapping[str, Any] | None = None,
        frozen_A: bool = True,
        max_activation_samples: int = 4096,
    ):
        self.batches, self.init, self.frozen_A = list(batches), init, frozen_A
        self.max_activation_samples = max_activation_samples
        self.history: list[dict[str, Any]] = []

    def verify(self, model, step: int, event: str) -> dict[str, Any] | None:
        if not distributed.is_main_process():
            return None
        result = verify_adapter(
            model, self.batches, max_activation_samples=self.max_activation_samples, init=self.init
        )
        self.history.append({"step": step, "event": event, "result": result})
        self._require_bound().scalars(summary_scalars(result), now=True)
        return result

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.frozen_A:
            check_frozen_A(model, optimizer)
        if state.global_step == 0:
            self.verify(model, state.global_step, "init")
        elif state.is_world_process_zero:  # only the main process verifies
            self.restore_history(args, state, "the verification at init")

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.verify(model, state.global_step, "evaluate")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.verify(model, state.global_step, "end")
