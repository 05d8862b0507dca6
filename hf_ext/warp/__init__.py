"""WaRP: basis reparameterization of linear weights, gradient importance and exact mask-restricted updates.

- :mod:`.reparam`: ``W = C @ U.T`` through ``torch.nn.utils.parametrize``; :func:`merge` back.
- :mod:`.leaf`: :class:`LeafReparameterization`, ``W`` formed once per optimizer step (phase 3).
- :mod:`.importance`: :class:`ImportanceAccumulator`, :class:`EmpiricalFisher`, :func:`make_accumulator`.
- :mod:`.masking`: exact top-k :func:`build_masks`; :class:`MaskedUpdate`, bit-identical frozen entries under any
  optimizer.
- :mod:`.callbacks`: the Trainer callbacks that put those into training.
- :mod:`.config`, :mod:`.arms`, :mod:`.layout`: the study's arguments, its control arms and baselines, its run
  directory; :mod:`.run`: :class:`WarpRun` (arguments, tokenizer, data, model loading); :mod:`.phases`: phase 1,
  phase 2 and the arms; :mod:`.head`: the prototype head and the outcomes read through it (margins, feature
  spread, decision cosine); :mod:`.evaluation`: held-out scores and the diverged flag; :mod:`.study`:
  :func:`run_warp_study` (seeds, the phases to run, the summary); :mod:`.summary`, :mod:`.verify`,
  :mod:`.commands`: the summary and verdicts over seeds, ``hf-ext warp verify`` and the ``hf-ext warp``
  subcommands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "callbacks": ["CoefficientDriftCallback", "ImportanceCallback", "LeafWeightCallback", "MaskedUpdateCallback"],
    "config": ["WarpArguments"],
    "importance": ["EmpiricalFisher", "ImportanceAccumulator", "make_accumulator"],
    "arms": ["control_masks"],
    "layout": ["WarpLayout"],
    "leaf": ["LeafReparameterization"],
    "masking": ["MaskInfo", "MaskedUpdate", "build_masks", "top_k_masks"],
    "reparam": ["coefficient_parameters", "coefficients", "merge", "merge_model", "reparameterize"],
    "run": ["WarpRun"],
    "study": ["run_warp_study"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from .arms import control_masks
    from .callbacks import CoefficientDriftCallback, ImportanceCallback, LeafWeightCallback, MaskedUpdateCallback
    from .config import WarpArguments
    from .importance import EmpiricalFisher, ImportanceAccumulator, make_accumulator
    from .layout import WarpLayout
    from .leaf import LeafReparameterization
    from .masking import MaskedUpdate, MaskInfo, build_masks, top_k_masks
    from .reparam import coefficient_parameters, coefficients, merge, merge_model, reparameterize
    from .run import WarpRun
    from .study import run_warp_study
