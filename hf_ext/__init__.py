"""hf_ext: research techniques for the Hugging Face Trainer.

The package face is narrow: the trainer, the argument classes, the callbacks and each study's entry point.
Building blocks are imported from their technique (``from hf_ext.warp import build_masks``) or shared module
(``from hf_ext.targets import select_linear``). Every name loads on first use, so ``import hf_ext`` and
``hf-ext --help`` stay cheap; the ``TYPE_CHECKING`` block names the same exports for IDEs and type checkers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports
from .version import __version__

_EXPORTS = {
    "config": ["DataArguments", "HfExtTrainingArguments", "ModelArguments"],
    "entrypoint": ["exit_on_user_error"],
    "errors": ["HfExtError"],
    "data": ["load_model_and_data"],
    "parsing": ["parse_config"],
    "plan": ["print_start_plan"],
    "run_logger": ["LoggingCallback"],
    "trainer": ["HfExtTrainer"],
    "drift": ["DriftArguments", "DriftCallback", "run_drift_study"],
    "heads": ["HeadImportanceCallback", "HeadStudyArguments", "run_head_study"],
    "lora_null": [
        "LoraNullArguments",
        "LoraNullCallback",
        "PreservationArguments",
        "run_preservation_study",
    ],
    "selective": ["SelectiveArguments"],
    "warp": [
        "CoefficientDriftCallback",
        "ImportanceCallback",
        "MaskedUpdateCallback",
        "WarpArguments",
        "run_warp_study",
    ],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .config import DataArguments, HfExtTrainingArguments, ModelArguments
    from .data import load_model_and_data
    from .drift import DriftArguments, DriftCallback, run_drift_study
    from .entrypoint import exit_on_user_error
    from .errors import HfExtError
    from .heads import HeadImportanceCallback, HeadStudyArguments, run_head_study
    from .lora_null import (
        LoraNullArguments,
        LoraNullCallback,
        PreservationArguments,
        run_preservation_study,
    )
    from .parsing import parse_config
    from .plan import print_start_plan
    from .run_logger import LoggingCallback
    from .selective import SelectiveArguments
    from .trainer import HfExtTrainer
    from .warp import CoefficientDriftCallback, ImportanceCallback, MaskedUpdateCallback, WarpArguments, run_warp_study
