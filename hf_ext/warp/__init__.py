"""WaRP: basis reparameterization of linear weights, gradient importance and exact mask-restricted updates.

- :mod:`.reparam`: ``W = C @ U.T`` through ``torch.nn.utils.parametrize``; :func:`merge` back.
- :mod:`.importance`: :class:`ImportanceAccumulator`, exact top-k :func:`build_masks`.
- :mod:`.masking`: :class:`MaskedUpdate`, bit-identical frozen entries under any optimizer.
- :mod:`.callbacks`: the Trainer callbacks that put those into training.
- :mod:`.config`, :mod:`.layout`, :mod:`.study`, :mod:`.verify`: the three-phase study, its run
  directory and ``hf-ext warp verify``.
"""

from .callbacks import CoefficientDriftCallback, ImportanceCallback, MaskedUpdateCallback
from .config import WarpArguments
from .importance import ImportanceAccumulator, MaskInfo, build_masks, top_k_masks
from .layout import WarpLayout
from .masking import MaskedUpdate
from .reparam import coefficient_parameters, coefficients, merge, merge_model, reparameterize
from .study import WarpRun, run_warp_study

__all__ = [
    "CoefficientDriftCallback",
    "ImportanceAccumulator",
    "ImportanceCallback",
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
    "merge_model",
    "reparameterize",
    "run_warp_study",
    "top_k_masks",
]
