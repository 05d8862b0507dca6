"""LoRA-Null: initialise a peft LoRA adapter in the approximate null space of each layer's inputs.

Naming follows peft: ``lora_A`` is ``r x d_in`` and applied first, ``lora_B`` is ``d_out x r``, and the
adapter adds ``scaling * B @ A @ x``. Calibration streams each target layer's uncentred input second
moment ``E[x x^T]`` in float64 (padding excluded, any batch size, summed across ranks) through
:func:`hf_ext.activations.iter_bases` and takes its eigenbasis (in groups of layers under a memory budget);
``U_min`` are the ``r`` eigenvectors with the smallest eigenvalues.

- ``null_frozen_A`` (default): ``A = U_min^T``, frozen; ``B = 0``, trained. The base weight is untouched, so
  the model is unchanged at init and the adapter can only respond to input directions the calibration
  data barely uses.
- ``null_projection``: ``P = W U_min U_min^T``; its rank-``r`` SVD ``P = U S V^T`` gives ``B = U sqrt(S)`` and
  ``A = sqrt(S) V^T`` (each divided by ``sqrt(scaling)``) and the base weight becomes ``W - P``; both train
  unless ``freeze_A``. The model is unchanged at init up to float error. The base weight is changed, so
  save the trained adapter with :func:`save_lora_null` (a standard LoRA for the original base model).

The result is an ordinary peft model: ``save_pretrained`` / ``PeftModel.from_pretrained`` / merging work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..activations import iter_bases
from ..errors import ConfigError
from ..io import write_json

logger = logging.getLogger(__name__)

MODES = ("null_frozen_A", "null_projection")
MIN_TOKENS_PER_DIM = 4  # below d_in tokens the covariance is singular; 4 x d_in keeps its smallest eigenvalues stable
INIT_FILE = "lora_null_init.json"


@dataclass
class LayerInit:
    """What calibration found for one target layer."""

    tokens: int
    d_in: int
    rank: int
    null_energy: float  # sum of the r smallest eigenvalues / trace: E||U_min^T x||^2 / E||x||^2
    smallest_eigenvalues: list[float] = field(default_factory=list)

    @property
    def theoretical_ratio(self) -> float:
        """``sqrt(null_energy)``: the ``||A x|| / ||x||`` (root mean square) a frozen ``U_min^T`` gives on the data."""
        return self.null_energy**0.5


@dataclass
class LoraNullInit:
    """Per-layer calibration results of :func:`initialize_lora_null_weights`."""

    mode: str
    freeze_A: bool
    layers: dict[str, LayerInit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "freeze_A": self.freeze_A,
            "layers": {
                name: {**vars(layer), "theoretical_ratio": layer.theoretical_ratio}
                for name, layer in self.layers.items()
            },
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``lora_null_init.json`` beside an adapter (``hf-ext lora-null verify`` reads it)."""
        path = Path(directory) / INIT_FILE
        write_json(path, self.to_dict())
        return path


def lora_layers(model: nn.Module, adapter_name: str = "default") -> dict[str, nn.Module]:
    """The peft LoRA layers of ``model`` that hold adapter ``adapter_name`` around an ``nn.Linear``."""
    found = {
        name: module
        for name, module in model.named_modules()
        if isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and adapter_name in module.lora_A
        and isinstance(getattr(module, "base_layer", None), nn.Linear)
    }
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no LoRA layer with adapter {adapter_name!r} around an nn.Linear: wrap the "
            "model with peft.get_peft_model(model, LoraConfig(...)) first"
        )
    return found


def _check_ranks(layers: Mapping[str, nn.Module], adapter_name: str, mode: str) -> None:
    for name, layer in layers.items():
        r, base = layer.r[adapter_name], layer.base_layer
        limit = base.in_features if mode == "null_frozen_A" else min(base.in_features, base.out_features)
        if r > limit:
            what = "d_in" if mode == "null_frozen_A" else "min(d_in, d_out)"
            raise ConfigError(
                f"LoRA rank r={r} is larger than {what}={limit} of {name} "
                f"({base.in_features} -> {base.out_features}): a rank-{r} null space does not exist; lower r"
            )


def check_calibration_tokens(counts: Mapping[str, int], dims: Mapping[str, int]) -> None:
    """Warn, with the number needed, for layers whose covariance saw too few tokens to be stable."""
    short = {name: (counts[name], dims[name]) for name in counts if counts[name] < MIN_TOKENS_PER_DIM * dims[name]}
    if short:
        name, (count, dim) = next(iter(short.items()))
        logger.warning(
            "calibration saw %d tokens for %s (d_in=%d) and %d more layer(s) like it; a stable covariance needs at "
            "least %d tokens (%d x d_in): its smallest eigenvalues, which choose the null space, are noise. Raise "
            "calib_samples or use longer calibration texts",
            count,
            name,
            dim,
            len(short) - 1,
            MIN_TOKENS_PER_DIM * dim,
            MIN_TOKENS_PER_DIM,
        )


@torch.no_grad()
def initialize_lora_null_weights(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    *,
    mode: str = "null_frozen_A",
    freeze_A: bool | None = None,
    adapter_name: str = "default",
    memory_gb: float | None = None,
    progress: bool = True,
) -> LoraNullInit:
    """Initialise every LoRA layer of the peft ``model`` in the null space of its inputs over ``dataloader``.

    Args:
        model: a peft model (``get_peft_model(base, LoraConfig(...))``); its adapters are disabled while
            calibrating, so the inputs are the base model's.
        dataloader: batches of model inputs (``input_ids``, ``attention_mask``); labels are ignored.
        mode: ``null_frozen_A`` or ``null_projection`` (see the module docstring).
        freeze_A: keep ``lora_A`` frozen; default ``True`` for ``null_frozen_A`` (which requires it) and
            ``False`` for ``null_projection``.
        adapter_name: the peft adapter to initialise.
        memory_gb: bound on the float64 input statistics held at once (GiB): the layers are calibrated in groups
            (:func:`hf_ext.activations.group_by_memory`), one pass over ``dataloader`` per group, so it must be
            re-iterable (a list, a DataLoader); None: one pass for every layer.

    Returns the per-layer calibration results (token counts, null-space energy, theoretical ratio).
    Every rank of a process group must call this.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    freeze_A = (mode == "null_frozen_A") if freeze_A is None else freeze_A
    if mode == "null_frozen_A" and not freeze_A:
        raise ConfigError("null_frozen_A keeps lora_A frozen by definition; use freeze_A=True or mode null_projection")
    layers = lora_layers(model, adapter_name)
    _check_ranks(layers, adapter_name, mode)
    results = {}
    with model.disable_adapter():
        # float64 products: the smallest eigenvalues, which choose the null space, drown in float32 rounding
        bases = iter_bases(
            model,
            {name: layer.base_layer for name, layer in layers.items()},
            dataloader,
            compute_dtype=torch.float64,
            memory_gb=memory_gb,
            progress=progress,
            out_dtype=torch.float64,
        )
        null_spaces = {}  # the r columns kept of each basis: one group's whole bases are alive at a time
        for name, basis, eigenvalues, count in bases:
            check_calibration_tokens({name: count}, {name: basis.shape[0]})
            r = layers[name].r[adapter_name]
            null_spaces[name] = basis[:, -r:].clone()  # eigenvalues are sorted in decreasing order
            tail = eigenvalues[-r:].clamp(min=0)
            results[name] = LayerInit(
                tokens=count,
                d_in=basis.shape[0],
                rank=r,
                null_energy=float(tail.sum() / eigenvalues.clamp(min=0).sum()),
                smallest_eigenvalues=[float(v) for v in tail.flip(0)[:8]],
            )
    for name, layer in layers.items():  # after disable_adapter(), which leaves the adapters trainable on exit
        _set_weights(layer, adapter_name, null_spaces[name], mode)
        layer.lora_A[adapter_name].weight.requires_grad_(not freeze_A)
        layer.lora_B[adapter_name].weight.requires_grad_(True)
    results = {name: results[name] for name in layers}  # model order, whatever order the groups came in
    return LoraNullInit(mode, freeze_A, results)


def _set_weights(layer: nn.Module, adapter_name: str, u_min: torch.Tensor, mode: str) -> None:
    a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
    if mode == "null_frozen_A":
        a.copy_(u_min.T.to(a.dtype))
        b.zero_()
        return
    base = layer.base_layer.weight
    scaling = layer.scaling[adapter_name]
    weight = base.double()
    projected = weight @ u_min.to(weight.device) @ u_min.T.to(weight.device)
    left, singular, right_t = torch.linalg.svd(projected, full_matrices=False)
    r = u_min.shape[1]
    root = singular[:r].sqrt() / scaling**0.5
    b.copy_((left[:, :r] * root).to(b.dtype))
    a.copy_((root[:, None] * right_t[:r]).to(a.dtype))
    base.copy_((weight - projected).to(base.dtype))


def trainable_lora_parameters(model: nn.Module, adapter_name: str = "default") -> dict[str, list[str]]:
    """Names of the LoRA ``A`` and ``B`` parameters that require grad."""
    out: dict[str, list[str]] = {"lora_A": [], "lora_B": []}
    for name, parameter in model.named_parameters():
        for kind in out:
            if f".{kind}.{adapter_name}." in name and parameter.requires_grad:
                out[kind].append(name)
    return out


def check_frozen_A(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, adapter_name: str = "default"):
    """Raise unless no ``lora_A`` requires grad, every ``lora_B`` does, and ``optimizer`` holds no ``lora_A``.

    Names are matched on peft's own parameter names (``...lora_A.<adapter>.weight``), so a filter typo cannot
    freeze the wrong projection silently.
    """
    trainable = trainable_lora_parameters(model, adapter_name)
    every_b = [n for n, _ in model.named_parameters() if f".lora_B.{adapter_name}." in n]
    if trainable["lora_A"]:
        raise RuntimeError(
            f"lora_A must be frozen, but {len(trainable['lora_A'])} require grad: {trainable['lora_A'][:3]}"
        )
    if sorted(trainable["lora_B"]) != sorted(every_b) or not every_b:
        missing = sorted(set(every_b) - set(trainable["lora_B"]))
        raise RuntimeError(f"every lora_B must be trainable; frozen: {missing[:3]}")
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        held = [names.get(id(p), "?") for group in optimizer.param_groups for p in group["params"]]
        wrong = [n for n in held if ".lora_A." in n]
        if wrong:
            raise RuntimeError(f"the optimizer holds frozen lora_A parameters: {wrong[:3]}")
        absent = sorted(set(every_b) - set(held))
        if absent:
            raise RuntimeError(f"the optimizer does not hold lora_B parameters: {absent[:3]}")


def save_lora_null(model: nn.Module, directory: str | Path, *, initial_adapter: str | Path | None = None) -> Path:
    """Save the adapter so that plain peft can load it onto the original base model.

    ``null_frozen_A`` leaves the base weights untouched: a plain ``save_pretrained``. ``null_projection``
    changed them to ``W - P``: pass ``initial_adapter``, the directory where the adapter was saved right after
    :func:`initialize_lora_null_weights`, and the trained change is written as a standard LoRA of rank ``2r``
    for the original weights, ``B' A' = B A - B_0 A_0`` with ``A' = [A; A_0]`` and ``B' = [B, -B_0]`` (what peft's
    ``path_initial_model_for_weight_conversion`` does for PiSSA and CorDA; peft 0.21's own conversion fails on
    models with ``modules_to_save`` such as a classifier head, hence this one).
    """
    directory = Path(directory)
    model.save_pretrained(str(directory))
    if initial_adapter is None:
        return directory
    from peft import PeftConfig
    from safetensors.torch import load_file, save_file

    weights = directory / "adapter_model.safetensors"
    trained, initial = load_file(str(weights)), load_file(str(Path(initial_adapter) / "adapter_model.safetensors"))
    config = PeftConfig.from_pretrained(str(directory))
    if config.rank_pattern or config.alpha_pattern:
        raise ConfigError("save_lora_null does not convert adapters with rank_pattern or alpha_pattern")
    converted = {}
    for key, value in trained.items():
        if "lora_A" in key:
            converted[key] = torch.cat([value, initial[key]], dim=0)
        elif "lora_B" in key:
            converted[key] = torch.cat([value, -initial[key]], dim=1)
        else:
            converted[key] = value
    # twice the rank with the same scaling: alpha / r (or alpha / sqrt(r) with rsLoRA) must not change
    config.lora_alpha = config.lora_alpha * (2**0.5 if config.use_rslora else 2)
    config.r *= 2
    config.init_lora_weights = True
    config.save_pretrained(str(directory))
    save_file({k: v.contiguous() for k, v in converted.items()}, str(weights), metadata={"format": "pt"})
    write_json(directory / INIT_FILE, {"mode": "null_projection", "converted": True, "layers": {}})
    return directory
