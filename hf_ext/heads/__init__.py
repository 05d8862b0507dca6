"""Attention-head gating and the head-plasticity study.

- :mod:`.gates`: :class:`HeadGates` (a gate per head on any architecture hf_ext knows) and
  :func:`head_update_sizes`.
- :mod:`.importance`: ablation (prefix-cached), gradient and Fisher importance per head.
- :mod:`.analysis`: JSONL measurements, the per-head table, statistics, cases and figures.
- :mod:`.callbacks`: :class:`HeadImportanceCallback` (gradient importance during training).
- :mod:`.config`, :mod:`.study`: the head-plasticity recipe's arguments and steps.
"""

from .callbacks import HeadImportanceCallback
from .config import HeadStudyArguments
from .gates import HeadGates, head_update_sizes
from .importance import AblationResult, GradientImportance, ablation_importance, gradient_importance
from .study import run_head_study

__all__ = [
    "AblationResult",
    "GradientImportance",
    "HeadGates",
    "HeadImportanceCallback",
    "HeadStudyArguments",
    "ablation_importance",
    "gradient_importance",
    "head_update_sizes",
    "run_head_study",
]
