"""WaRP: basis reparameterization of linear weights, gradient importance and exact mask-restricted updates.

- :mod:`.reparam`: ``W = C @ U.T`` through ``torch.nn.utils.parametrize``; :func:`merge` back.
- :mod:`.leaf`: :class:`LeafReparameterization`, ``W`` formed once per optimizer step (phase 3).
- :mod:`.importance`: :class:`ImportanceAccumulator`, :class:`EmpiricalFisher`, exact top-k :func:`build_masks`.
- :mod:`.masking`: :class:`MaskedUpdate`, bit-identical frozen entries under any optimizer.
- :mod:`.callbacks`: the Trainer callbacks that put those into training.
- :mod:`.config`, :mod:`.arms`, :mod:`.layout`, :mod:`.study`, :mod:`.summary`, :mod:`.verify`: the
  study (phases, control arms and baselines, seeds), its run directory and ``hf-ext warp verify``.
"""

from .callbacks import CoefficientDriftCallback, ImportanceCallback, LeafWeightCallback, MaskedUpdateCallback
from .config import WarpArguments
from .importance import EmpiricalFisher, ImportanceAccumulator, MaskInfo, build_masks, make_accumulator, top_k_masks
from .layout import WarpLayout
from .leaf import LeafReparameterization
from .masking import MaskedUpdate
from .reparam import coefficient_parameters, coefficients, merge, merge_model, reparameterize
from .study import WarpRun, run_warp_study

__all__ = [
    "CoefficientDriftCallback",
    "EmpiricalFisher",
    "ImportanceAccumulator",
    "ImportanceCallback",
    "LeafReparameterization",
    "LeafWeightCallback",
    "MaskInfo",
    "MaskedUpdate",
    "MaskedUpdateCallback",
    "WarpArguments",
    "WarpLayout",
    "WarpRun",
    "build_masks",
    "coefficient_parameters",
    "coefficients",
    "merge",
    "make_accumulator",
    "merge_model",
    "reparameterize",
    "run_warp_study",
    "top_k_masks",
]
