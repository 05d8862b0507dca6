"""In-training drift: per-layer CKA and cosine against the base model, logged through ``Trainer.log``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..run_logger import LoggingCallback
from ..trainer import CheckpointedHistory
from .measure import measure_drift, open_base_dump
from .recorders import check_pooling
from .shards import dump_representations


class DriftCallback(CheckpointedHistory, LoggingCallback):
    """Measure drift from the base on a fixed set every ``every`` steps and at the last step.

    The training batch, optimizer and RNG are untouched: measurements run in eval mode under
    ``no_grad`` on the main process. For a peft model the base is the same model under
    ``disable_adapter()``; otherwise the base representations are streamed from ``base_dump``, which is
    written at step 0 if it does not exist yet. Scalars ``drift/cka/layer_<l>``,
    ``drift/debiased_cka/layer_<l>`` and ``drift/cosine/layer_<l>`` go through ``Trainer.log``;
    :attr:`history` keeps every measurement; it is saved in each checkpoint (``drift_history.json``) and
    restored on resume.
    """

    reads = "weights"
    history_file = "drift_history.json"

    def __init__(
        self,
        batches: Sequence[Mapping[str, torch.Tensor]],
        *,
        every: int = 0,
        pooling: str = "mean",
        layers: str | Sequence[int] | None = None,
        base_dump: str | Path | None = None,
    ):
        if every < 0:
            raise ValueError(f"every={every}: expected 0 (only at the end) or a positive number of steps")
        if not batches:
            raise ValueError("DriftCallback needs at least one batch of evaluation examples")
        self.batches, self.every, self.pooling, self.layers = list(batches), every, pooling, layers
        self.base_dump = None if base_dump is None else Path(base_dump)
        self.history: list[dict[str, Any]] = []
        self._last_step: int | None = None

    def _uses_adapter(self, model) -> bool:
        return hasattr(model, "disable_adapter")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._require_bound()
        check_pooling(model, self.pooling)
        if state.global_step > 0 and state.is_world_process_zero:  # only the main process measures
            self.restore_history(args, state, "the drift measured before the checkpoint")
        if self._uses_adapter(model):
            return
        if self.base_dump is not None and (self.base_dump / "metadata.json").is_file():
            open_base_dump(self.base_dump, model, self.batches)  # a dump of other examples fails here, not later
            return
        if self.base_dump is None:
            raise ValueError(
                "DriftCallback on a model without an adapter needs base_dump: the directory where the base "
                "representations are (or will be, at step 0) dumped"
            )
        dump_representations(
            model, self.batches, self.base_dump, pooling=self.pooling, layers=self.layers, progress=False
        )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if (self.every and step % self.every == 0) or step == state.max_steps:
            self.measure(model, step)

    def measure(self, model, step: int) -> None:
        """Measure now (main process only) and log the per-layer values."""
        if step == self._last_step or not distributed.is_main_process():
            return
        self._last_step = step
        base = None if self._uses_adapter(model) else self.base_dump
        results = measure_drift(model, self.batches, base=base, pooling=self.pooling, layers=self.layers)
        scalars = {}
        for layer, r in results.items():
            scalars[f"drift/cka/layer_{layer}"] = r.cka
            if r.debiased_cka is not None:
                scalars[f"drift/debiased_cka/layer_{layer}"] = r.debiased_cka
            if r.cosine_mean is not None:
                scalars[f"drift/cosine/layer_{layer}"] = r.cosine_mean
        self._require_bound().scalars(scalars, now=True)
        self.history.append({"step": step, "layers": {str(k): v.to_dict() for k, v in results.items()}})
