"""Basis reparameterization of linear weights (WaRP): ``W = C @ U.T`` with ``U`` frozen, ``C`` trained.

``U`` (d_in x r) is an orthonormal basis of the layer's input space, typically the eigenbasis of
the input second moment (:func:`hf_ext.activations.compute_bases`). The weight becomes a
``torch.nn.utils.parametrize`` parametrization of its coefficients ``C = W @ U``, so gradients flow
to ``C`` through autograd (a forward hook that assigns ``weight.data`` would cut them). With
``r < d_in`` the part of ``W`` outside the basis stays as a frozen residual. :func:`merge` turns the
module back into a plain ``nn.Linear`` whose ``weight`` is ``C @ U.T`` (+ residual), so a saved
model loads with plain transformers.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..activations import orthonormality_error
from ..errors import ConfigError


class BasisParametrization(nn.Module):
    """``weight = (coefficients @ basis.T + residual).to(weight_dtype)``; ``right_inverse`` gives ``C = W @ U``.

    ``C``, ``U`` and the residual are float32 (or float64) whatever the model's dtype: a bf16 ``C`` would
    change the weight by re-expressing it (``C @ U.T`` is not exact in bf16) and round small optimizer
    steps away; the weight is cast to the model's dtype in the forward. Both buffers are non-persistent:
    a checkpoint of a reparameterized model holds only ``C`` (``...parametrizations.weight.original``);
    the basis comes from ``basis.safetensors``.
    """

    def __init__(self, basis: torch.Tensor, residual: torch.Tensor | None = None, weight_dtype=None):
        super().__init__()
        self.weight_dtype = weight_dtype or basis.dtype
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("residual", residual, persistent=False)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        weight = coefficients @ self.basis.T
        weight = weight if self.residual is None else weight + self.residual
        return weight.to(self.weight_dtype)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return fit_coefficients(weight, self.basis)


@torch.no_grad()
def fit_coefficients(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``C = W @ U`` computed in float64, returned in the basis' dtype."""
    return (weight.double() @ basis.double()).to(basis.dtype)


@torch.no_grad()
def basis_and_residual(weight: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The basis on the weight's device in float32 at least (C, U and the residual never take a 16-bit dtype),
    and the part of ``W`` outside a basis of fewer than ``in_features`` directions (``None`` at full rank)."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    basis = basis.to(weight.device, dtype)
    if basis.shape[1] == weight.shape[1]:
        return basis, None
    u, w = basis.double(), weight.double()
    return basis, (w - (w @ u) @ u.T).to(dtype)


def plan_bases(
    model: nn.Module, bases: Mapping[str, torch.Tensor], *, rank: int | None = None, atol: float = 1e-4
) -> dict[str, tuple[nn.Linear, torch.Tensor]]:
    """Check ``bases`` against ``model`` and return ``{name: (module, U[:, :rank])}``; touches nothing.

    Raises ``ValueError`` if a name is not a linear module of the model, its weight is tied to another
    module's, a basis has the wrong shape or is not orthonormal, or a module is already reparameterized.
    """
    module_names = dict(model.named_modules())
    owners: dict[int, list[str]] = {}
    for param_name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(param_name)
    plans = {}
    for name, basis in bases.items():
        module = module_names.get(name)
        if not isinstance(module, nn.Linear):
            close = difflib.get_close_matches(
                name, [n for n, m in module_names.items() if isinstance(m, nn.Linear)], n=3
            )
            found = "is not an nn.Linear" if module is not None else "does not exist in the model"
            raise ValueError(
                f"basis given for module {name!r}, which {found}" + (f"; did you mean {close}?" if close else "")
            )
        if is_reparameterized(module):
            raise ValueError(f"module {name!r} is already reparameterized; merge() it first")
        shared = owners.get(id(module.weight), [])
        if len(shared) > 1:
            raise ValueError(
                f"the weight of {name!r} is tied ({', '.join(shared)}); a tied weight cannot be reparameterized"
            )
        d_in = module.in_features
        r = basis.shape[-1] if rank is None else rank
        if rank is not None and not 0 < rank <= min(basis.shape[-1], d_in):
            raise ConfigError(
                f"rank {rank} asked for {name!r}, whose basis has {basis.shape[-1]} directions (input width {d_in}); "
                f"choose basis_rank between 1 and {min(basis.shape[-1], d_in)}"
            )
        if basis.ndim != 2 or basis.shape[0] != d_in or not 0 < r <= basis.shape[1]:
            raise ConfigError(
                f"basis for {name!r} has shape {tuple(basis.shape)}; expected ({d_in}, r) with rank r in 1..{d_in}"
                + (f" (rank={rank} asked)" if rank is not None else "")
                + ": it was computed for another model; recompute it (WaRP phase 1) for this one"
            )
        basis = basis[:, :r].clone() if r < basis.shape[1] else basis  # a view would keep every column alive
        if not torch.isfinite(basis).all():
            raise ConfigError(f"basis for {name!r} holds NaN or infinite values; recompute it (WaRP phase 1)")
        error = orthonormality_error(basis)
        if error > atol:
            raise ConfigError(
                f"basis for {name!r} is not orthonormal: max |U^T U - I| = {error:.2e} > {atol:g}; recompute it "
                "(WaRP phase 1)"
            )
        plans[name] = (module, basis)
    return plans


def reparameterize(
    model: nn.Module, bases: Mapping[str, torch.Tensor], *, rank: int | None = None, atol: float = 1e-4
) -> dict[str, nn.Linear]:
    """Rewrite the weight of each module named in ``bases`` as ``C @ U.T`` with ``U = bases[name][:, :rank]``.

    Args:
        model: the model holding the modules.
        bases: ``{module name: U}`` with ``U`` of shape ``(in_features, >= rank)``, orthonormal
            columns sorted by importance (as :func:`hf_ext.activations.compute_bases` returns them). ``U`` is stored
            in the weight's dtype for the forward; ``C`` is computed from it in float64.
        rank: keep the first ``rank`` directions; the rest of ``W`` becomes a frozen residual.
            ``None`` keeps all of them and needs no residual.
        atol: largest allowed ``|U.T U - I|`` entry.

    Returns:
        ``{name: module}`` of the reparameterized modules.

    Raises ``ValueError`` before touching any module if a name is not a linear module of the
    model, its weight is tied to another module's, a basis has the wrong shape or is not
    orthonormal, or a module is already reparameterized.
    """
    plans = plan_bases(model, bases, rank=rank, atol=atol)
    for module, basis in plans.values():
        weight = module.weight.detach()
        basis, residual = basis_and_residual(weight, basis)  # the forward's basis; C is fitted to it in float64
        parametrization = BasisParametrization(basis, residual, weight.dtype)
        # parametrize takes C's dtype from the weight it starts from: start from a float32 copy
        module.weight = nn.Parameter(weight.to(basis.dtype), requires_grad=module.weight.requires_grad)
        parametrize.register_parametrization(module, "weight", parametrization, unsafe=True)
    _keep_out_of_ddp_broadcast(model)
    return {name: module for name, (module, _) in plans.items()}


DDP_IGNORE = "_ddp_params_and_buffers_to_ignore"


def _keep_out_of_ddp_broadcast(model: nn.Module) -> None:
    """DDP broadcasts every buffer from rank 0 before each forward; a basis is constant and identical on all
    ranks (each loads the same basis.safetensors), so its buffers go on the model's DDP ignore list."""
    ours = {
        f"{module_name}.{buffer_name}"
        for module_name, module in model.named_modules()
        if isinstance(module, BasisParametrization)
        for buffer_name, _ in module.named_buffers(recurse=False)
    }
    update_ddp_ignore(model, add=ours, drop=lambda name: ".parametrizations.weight." in name)


def update_ddp_ignore(model: nn.Module, *, add: Iterable[str] = (), drop=lambda name: False) -> None:
    """Edit the list of parameter and buffer names DDP leaves alone (read when DDP wraps the model)."""
    kept = {name for name in getattr(model, DDP_IGNORE, ()) if not drop(name)}
    object.__setattr__(model, DDP_IGNORE, sorted(kept | set(add)))


def is_reparameterized(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        isinstance(p, BasisParametrization) for p in module.parametrizations.weight
    )


def coefficients(module: nn.Module) -> nn.Parameter:
    """The trainable coefficient matrix ``C`` (d_out x r) of a reparameterized module."""
    if not is_reparameterized(module):
        raise ValueError(f"{type(module).__name__} is not reparameterized; call reparameterize() first")
    return module.parametrizations.weight.original


def coefficient_parameters(modules: Mapping[str, nn.Module]) -> dict[str, nn.Parameter]:
    """``{name: C}`` for reparameterized modules."""
    return {name: coefficients(module) for name, module in modules.items()}


def merge(modules: Mapping[str, nn.Module] | Iterable[nn.Module]) -> None:
    """Turn reparameterized modules back into plain linear layers with ``weight = C @ U.T (+ residual)``.

    The merged weight keeps the coefficients' ``requires_grad``.
    """
    for module in modules.values() if isinstance(modules, Mapping) else modules:
        if is_reparameterized(module):
            with torch.no_grad():
                weight = module.weight.detach().clone()  # C @ U.T (+ residual), in the model's dtype
            trainable = coefficients(module).requires_grad
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            module.weight = nn.Parameter(weight, requires_grad=trainable)


def merge_model(model: nn.Module) -> None:
    """:func:`merge` every reparameterized module of ``model``."""
    merge([m for m in model.modules() if is_reparameterized(m)])
    _keep_out_of_ddp_broadcast(model)
