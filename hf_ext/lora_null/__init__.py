"""LoRA-Null: peft LoRA adapters initialised in the null space of each layer's inputs, verification, study."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "callbacks": ["LoraNullCallback"],
    "config": ["LoraNullArguments"],
    "init": ["check_frozen_A", "initialize_lora_null_weights", "save_lora_null"],
    "preservation": ["PreservationArguments", "run_preservation_study"],
    "study": [
        "calibration_batches",
        "prepare_run",
        "report_lora_null",
        "save_initial_adapter",
        "verification_batches",
    ],
    "verify": ["verify_adapter"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .callbacks import LoraNullCallback
    from .config import LoraNullArguments
    from .init import check_frozen_A, initialize_lora_null_weights, save_lora_null
    from .preservation import PreservationArguments, run_preservation_study
    from .study import calibration_batches, prepare_run, report_lora_null, save_initial_adapter, verification_batches
    from .verify import verify_adapter
