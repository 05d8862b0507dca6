"""Attention-head gating and the head-plasticity study.

- :mod:`.gates`: :class:`HeadGates` (a gate per head on any architecture hf_ext knows, zero or mean
  ablation), :func:`mean_head_outputs` and :func:`head_update_sizes`.
- :mod:`.importance`: ablation (prefix-cached), gradient and Fisher importance per head, per example.
- :mod:`.entropy`: attention entropy per head.
- :mod:`.pruning`: iterative pruning curves (importance recomputed every round; random orders as control).
- :mod:`.probe`: a linear probe of the task head before importance is measured.
- :mod:`.analysis`, :mod:`.rank_statistics`, :mod:`.bootstrap`: JSONL measurements, the per-head table,
  statistics with bootstrap intervals, cases and figures.
- :mod:`.callbacks`: :class:`HeadImportanceCallback` (gradient importance during training).
- :mod:`.config`, :mod:`.study`: the head-plasticity recipe's arguments and steps.
"""

from .callbacks import HeadImportanceCallback
from .config import HeadStudyArguments
from .entropy import attention_entropy
from .gates import HeadGates, head_update_sizes, mean_head_outputs
from .importance import AblationResult, GradientImportance, ablation_importance, gradient_importance
from .pruning import prune_curve
from .study import run_head_study

__all__ = [
    "AblationResult",
    "GradientImportance",
    "HeadGates",
    "HeadImportanceCallback",
    "HeadStudyArguments",
    "ablation_importance",
    "attention_entropy",
    "gradient_importance",
    "head_update_sizes",
    "mean_head_outputs",
    "prune_curve",
    "run_head_study",
]
