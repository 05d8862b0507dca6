"""Phase 3 with a leaf weight: ``W = C @ U.T`` formed once per optimizer step instead of in every forward.

The parametrized path (:mod:`hf_ext.warp.reparam`) forms ``W`` in every forward and projects ``W``'s
gradient onto the basis in every backward: two ``d_out x d_in x r`` products per micro-batch. Phase 3
needs neither per micro-batch. Here the weight stays an ordinary trainable ``nn.Parameter``, so the
forward, autograd, DDP's gradient all-reduce and ``save_pretrained`` see a plain linear layer, and
``W.grad`` accumulates over the micro-batches as usual. Once per optimizer step (HfExtTrainer's
gradients-ready hook, before clipping) :meth:`LeafReparameterization.project_grads_` sets
``C.grad = W.grad @ U`` and drops ``W.grad``, so the optimizer steps ``C`` and skips ``W`` (optimizers
skip a parameter without gradient, weight decay included); after the step
:meth:`~LeafReparameterization.form_weights_` writes ``W = C @ U.T`` again. The fixed cost divides by
the gradient-accumulation steps.

Only the trainable columns of ``C`` enter the two products: a column a mask freezes whole (granularity
"input", or an element mask frozen down a whole column) never changes, so its share of ``W`` is formed
once into a constant, together with the residual of a truncated basis. That constant is one float32
``d_out x d_in`` matrix per target, held only when some column is frozen or the basis is truncated.

``C`` is registered on its module as ``coefficients`` (the Trainer's optimizer finds it there); it, the
basis columns and the constant are on the model's DDP ignore list: ``C.grad`` is formed from ``W.grad``,
which DDP has already averaged across ranks.

Under FSDP2 (``fully_shard``, the weights DTensors split along the output rows) everything above is per row:
each rank fits, steps and forms only its rows, ``C_local = W_local @ U`` and ``C.grad_local = W.grad_local @ U``
with ``U`` whole on every rank, and ``C`` is a DTensor sharded as ``W`` (:mod:`hf_ext.sharding`). Attach the
leaf after ``fully_shard``; no collective is added (FSDP2 has reduce-scattered ``W.grad``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import sharding
from .reparam import basis_and_residual, fit_coefficients, plan_bases, update_ddp_ignore

COEFFICIENTS = "coefficients"
_BUFFERS = ("basis_columns", "trainable_columns", "fixed_weight")


def _frozen_columns(name: str, mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    if mask is None:
        return torch.zeros(shape[1], dtype=torch.bool)
    if mask.shape == (shape[1],):
        return sharding.local(mask).to(torch.bool).cpu()
    if mask.shape == shape:
        return sharding.all_rows(mask.to(torch.bool)).cpu()
    raise ValueError(
        f"mask for {name!r} has shape {tuple(mask.shape)}; expected {tuple(shape)} (element-wise) or "
        f"({shape[1]},) (one flag per input direction)"
    )


class LeafReparameterization:
    """Train the coefficients ``C = W @ U`` of the modules named in ``bases`` with ``W`` kept a leaf.

    Args:
        model: the model holding the modules; checked as :func:`~hf_ext.warp.reparam.reparameterize`
            checks it (linear, untied, orthonormal basis of the right shape).
        bases: ``{module name: U}``, as for :func:`~hf_ext.warp.reparam.reparameterize`.
        rank: keep the first ``rank`` directions; the rest of ``W`` is a constant residual.
        masks: ``{module name: bool mask}`` (``True`` = frozen) or ``None``; used only to leave wholly
            frozen columns out of the products. Keeping the frozen entries bit-identical is
            :class:`~hf_ext.warp.masking.MaskedUpdate`'s job, as on the parametrized path.

    ``W`` is re-expressed as ``C @ U.T`` (+ constant) in the model's dtype at once, as the parametrized
    path's first forward does. Call :meth:`project_grads_` once per optimizer step after the
    gradients are complete and before clipping, :meth:`form_weights_` after each optimizer step,
    and :meth:`merge` when training is done.
    """

    def __init__(
        self,
        model: nn.Module,
        bases: Mapping[str, torch.Tensor],
        *,
        rank: int | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
    ):
        plans = plan_bases(model, bases, rank=rank)
        for name, (module, _) in plans.items():
            if COEFFICIENTS in module._parameters:
                raise ValueError(f"module {name!r} already trains through a leaf weight; merge() it first")
        unknown = sorted(set(masks or {}) - set(plans))
        if unknown:
            raise ValueError(f"masks for modules without a basis: {unknown}")
        self.model = model
        self.modules = {name: module for name, (module, _) in plans.items()}
        for name, (module, basis) in plans.items():
            self._attach(name, module, basis, (masks or {}).get(name))
        update_ddp_ignore(model, add=self._ddp_names())
        self.form_weights_()

    @staticmethod
    @torch.no_grad()
    def _attach(name: str, module: nn.Linear, basis: torch.Tensor, mask: torch.Tensor | None) -> None:
        sharded_weight = module.weight
        weight = sharding.local(sharded_weight).detach()
        basis, residual = basis_and_residual(weight, basis)
        coefficients = fit_coefficients(weight, basis)
        frozen = _frozen_columns(name, mask, (sharded_weight.shape[0], coefficients.shape[1]))  # on the CPU
        fixed, trainable = residual, None
        if frozen.any():
            share = coefficients[:, frozen.to(weight.device)] @ basis[:, frozen.to(weight.device)].T
            fixed = share if fixed is None else fixed + share
            trainable = (~frozen).nonzero().squeeze(1).to(weight.device)
        coefficients = sharding.shard_like(coefficients, sharded_weight)
        module.register_parameter(COEFFICIENTS, nn.Parameter(coefficients, requires_grad=True))
        module.register_buffer("basis_columns", basis if trainable is None else basis[:, trainable], persistent=False)
        module.register_buffer("trainable_columns", trainable, persistent=False)
        module.register_buffer("fixed_weight", fixed, persistent=False)  # this rank's rows
        module.weight.requires_grad_(True)

    def _ddp_names(self) -> set[str]:
        return {f"{name}.{attr}" for name in self.modules for attr in (COEFFICIENTS, *_BUFFERS)}

    @property
    def coefficients(self) -> dict[str, nn.Parameter]:
        """``{module name: C}`` (float32 at least, ``d_out x r``)."""
        return {name: getattr(module, COEFFICIENTS) for name, module in self.modules.items()}

    @property
    def weights(self) -> dict[str, nn.Parameter]:
        return {name: module.weight for name, module in self.modules.items()}

    @torch.no_grad()
    def project_grads_(self) -> None:
        """``C.grad = W.grad @ U`` on the trainable columns (zero on the others); ``W.grad`` is dropped."""
        for name, module in self.modules.items():
            grad = module.weight.grad
            if grad is None:
                raise RuntimeError(f"the weight of {name!r} has no gradient: is it on the loss path?")
            coefficients = getattr(module, COEFFICIENTS)
            local = sharding.local(coefficients)
            projected = sharding.local(grad).to(local.dtype) @ module.basis_columns
            if module.trainable_columns is not None:
                projected = torch.zeros_like(local).index_copy_(1, module.trainable_columns, projected)
            coefficients.grad = sharding.shard_like(projected, coefficients)
            module.weight.grad = None

    @torch.no_grad()
    def form_weights_(self) -> None:
        """``W = C @ U.T`` (+ constant) in the model's dtype."""
        for module in self.modules.values():
            coefficients = sharding.local(getattr(module, COEFFICIENTS))
            if module.trainable_columns is not None:
                coefficients = coefficients.index_select(1, module.trainable_columns)
            weight = coefficients @ module.basis_columns.T
            if module.fixed_weight is not None:
                weight += module.fixed_weight
            sharding.local(module.weight).copy_(weight)

    def merge(self) -> None:
        """Leave plain linear layers: ``W`` keeps the coefficients' ``requires_grad``; ``C`` and the basis go."""
        self.form_weights_()
        for module in self.modules.values():
            trainable = getattr(module, COEFFICIENTS).requires_grad
            del module._parameters[COEFFICIENTS]
            for buffer in _BUFFERS:
                del module._buffers[buffer]
            module.weight.requires_grad_(trainable)
        names = self._ddp_names()
        update_ddp_ignore(self.model, drop=names.__contains__)
        self.modules = {}
