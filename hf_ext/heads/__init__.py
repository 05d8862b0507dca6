"""Attention-head gating and the head-plasticity study.

- :mod:`.gates`: :class:`HeadGates` (a gate per head on any architecture hf_ext knows, zero or mean
  ablation), :func:`mean_head_outputs` and :func:`head_update_sizes`.
- :mod:`.importance`: ablation (prefix-cached), gradient and Fisher importance per head, per example.
- :mod:`.entropy`: attention entropy per head.
- :mod:`.pruning`: pruning curves ranked on one set of batches and evaluated on another (importance
  recomputed every round, ranked once, or reversed; random orders as control).
- :mod:`.analysis`, :mod:`.rank_statistics`, :mod:`.bootstrap`: JSONL measurements, the per-head table,
  statistics with bootstrap intervals, cases and figures.
- :mod:`.callbacks`: :class:`HeadImportanceCallback` (gradient importance during training).
- :mod:`.config`, :mod:`.study`: the head-plasticity recipe's arguments and steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "callbacks": ["HeadImportanceCallback"],
    "config": ["HeadStudyArguments"],
    "entropy": ["attention_entropy"],
    "gates": ["HeadGates", "head_update_sizes", "mean_head_outputs"],
    "importance": ["AblationResult", "GradientImportance", "ablation_importance", "gradient_importance"],
    "pruning": ["prune_curve"],
    "study": ["run_head_study"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .callbacks import HeadImportanceCallback
    from .config import HeadStudyArguments
    from .entropy import attention_entropy
    from .gates import HeadGates, head_update_sizes, mean_head_outputs
    from .importance import AblationResult, GradientImportance, ablation_importance, gradient_importance
    from .pruning import prune_curve
    from .study import run_head_study
