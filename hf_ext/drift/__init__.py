"""Representation dumping and drift analysis.

- :mod:`.recorders`: hooks that capture pooled hidden states of the embeddings and every block.
- :mod:`.shards`: safetensors dumps written by a background thread, resumable, read shard by shard.
- :mod:`.metrics`: streaming linear and debiased CKA and cosine (:func:`linear_cka`).
- :mod:`.measure`: drift between two dumps, or of a live model against its base.
- :mod:`.stats`: paired permutation tests and bootstrap intervals.
- :mod:`.callbacks`: :class:`DriftCallback`, drift logged during training.
- :mod:`.config`, :mod:`.study`, :mod:`.analysis`: the full-vs-LoRA study of ``recipes/drift.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "analysis": ["analyze_run"],
    "callbacks": ["DriftCallback"],
    "config": ["DriftArguments"],
    "measure": ["check_paired", "compare_dumps", "measure_drift"],
    "metrics": ["CKAAccumulator", "DriftAccumulator", "LayerDrift", "linear_cka"],
    "recorders": ["RepresentationRecorder"],
    "shards": ["DumpReader", "dump_representations"],
    "stats": ["bootstrap_interval", "paired_permutation_test"],
    "study": ["run_drift_study"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .analysis import analyze_run
    from .callbacks import DriftCallback
    from .config import DriftArguments
    from .measure import check_paired, compare_dumps, measure_drift
    from .metrics import CKAAccumulator, DriftAccumulator, LayerDrift, linear_cka
    from .recorders import RepresentationRecorder
    from .shards import DumpReader, dump_representations
    from .stats import bootstrap_interval, paired_permutation_test
    from .study import run_drift_study
