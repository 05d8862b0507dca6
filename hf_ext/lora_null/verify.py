"""Did the null space survive? Per-layer measurements of a LoRA(-Null) adapter on real inputs.

For each LoRA layer, over at most ``max_activation_samples`` input rows (non-pad tokens), with ``A``, ``B``
and ``s`` the adapter's matrices and scaling and ``y`` the layer's full output (base + adapter); ratios
are root mean squares (``sqrt(sum ||.||^2 / sum ||.||^2)``), so that on the calibration data the first
one equals the theoretical value exactly:

- ``null_ratio``: ``||Q^T x|| / ||x||`` with ``Q`` an orthonormal basis of ``A``'s row space (for the
  orthonormal ``A`` of ``null_frozen_A`` this is ``||A x|| / ||x||``): how much input energy the adapter can
  see. < 0.1 good, 0.1-0.5 degraded, > 0.5 broken.
- ``adapter_effect``: ``||s B A x|| / ||x||``. > 1e-4 effective, < 1e-6 dead.
- ``contribution``: ``||s B A x|| / ||y||``. > 1% effective, < 0.1% negligible.
- ``norm_A``, ``norm_B``, ``norm_W`` (Frobenius; ``W`` is the base weight as it is now), ``a_ratio``
  (``||A x|| / ||x||`` unnormalised) and ``theoretical_ratio`` (``sqrt(sum of the r smallest eigenvalues /
  trace)`` from calibration, when the adapter's ``lora_null_init.json`` is known).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import FileFormatError
from ..io import read_json, write_json
from ..models import eval_mode, model_device, model_inputs
from .init import INIT_FILE, lora_layers

THRESHOLDS = {
    # metric: (good verdict, limit, middle verdict, limit, bad verdict); "good" is below the first limit for
    # null_ratio and above it for the others
    "null_ratio": ("good", 0.1, "degraded", 0.5, "broken"),
    "adapter_effect": ("effective", 1e-4, "weak", 1e-6, "dead"),
    "contribution": ("effective", 1e-2, "small", 1e-3, "negligible"),
}
METRICS = (
    "null_ratio",
    "a_ratio",
    "theoretical_ratio",
    "adapter_effect",
    "contribution",
    "norm_A",
    "norm_B",
    "norm_W",
)


def verdict(metric: str, value: float) -> str:
    """The verdict of a metric's value (see the module docstring)."""
    good, first, middle, second, bad = THRESHOLDS[metric]
    if metric == "null_ratio":
        return good if value < first else middle if value <= second else bad
    return good if value > first else middle if value >= second else bad


class _LayerSums:
    def __init__(self, layer: nn.Module, adapter_name: str, limit: int):
        self.layer, self.adapter_name, self.limit = layer, adapter_name, limit
        a = layer.lora_A[adapter_name].weight.detach().double()
        self.q = torch.linalg.qr(a.T).Q  # orthonormal basis of A's row space, [d_in, r]
        self.rows = 0
        self.sums = dict.fromkeys(("x", "qx", "ax", "bax", "y"), 0.0)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        take = self.limit - self.rows
        if take <= 0:
            return
        x, y = x[:take].double(), y[:take].double()
        layer, name = self.layer, self.adapter_name
        ax = x @ layer.lora_A[name].weight.double().T
        bax = layer.scaling[name] * ax @ layer.lora_B[name].weight.double().T
        for key, value in (("x", x), ("qx", x @ self.q.to(x.device)), ("ax", ax), ("bax", bax), ("y", y)):
            self.sums[key] += float((value * value).sum())
        self.rows += x.shape[0]


@torch.no_grad()
def verify_adapter(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    max_activation_samples: int = 4096,
    adapter_name: str = "default",
    init: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure every LoRA layer of the peft ``model`` on ``batches``; returns ``{"layers": {...}, "mean": {...}}``.

    ``init`` is the calibration record (:meth:`LoraNullInit.to_dict` or a ``lora_null_init.json``), for the
    theoretical ratio. Padding is excluded through the batches' attention masks.
    """
    layers = lora_layers(model, adapter_name)
    sums = {name: _LayerSums(layer, adapter_name, max_activation_samples) for name, layer in layers.items()}
    mask: list[torch.Tensor | None] = [None]

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x, y = args[0], output
            keep = mask[0]
            rows = (x[keep], y[keep]) if keep is not None and x.shape[:-1] == keep.shape else (x, y)
            sums[name].add(rows[0].reshape(-1, x.shape[-1]), rows[1].reshape(-1, y.shape[-1]))

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    device = model_device(model)
    try:
        with eval_mode(model):
            for batch in tqdm(batches, desc="verify", unit="batch", disable=not progress):
                inputs = model_inputs(batch, device)
                attention = inputs.get("attention_mask")
                mask[0] = None if attention is None else attention.bool()
                model(**inputs)
                if all(s.rows >= max_activation_samples for s in sums.values()):
                    break
    finally:
        for handle in handles:
            handle.remove()
    theoretical = (init or {}).get("layers", {})
    results = {}
    for name, s in sums.items():
        if s.rows == 0:
            raise ValueError(f"{name} saw no input rows: the data was empty or every token was padding")
        layer = layers[name]
        x = s.sums["x"]
        results[name] = {
            "rows": s.rows,
            "null_ratio": (s.sums["qx"] / x) ** 0.5,
            "a_ratio": (s.sums["ax"] / x) ** 0.5,
            "theoretical_ratio": theoretical.get(name, {}).get("theoretical_ratio"),
            "adapter_effect": (s.sums["bax"] / x) ** 0.5,
            "contribution": (s.sums["bax"] / s.sums["y"]) ** 0.5 if s.sums["y"] > 0 else math.nan,
            "norm_A": float(layer.lora_A[adapter_name].weight.double().norm()),
            "norm_B": float(layer.lora_B[adapter_name].weight.double().norm()),
            "norm_W": float(layer.base_layer.weight.double().norm()),
        }
    mean = {
        metric: sum(r[metric] for r in results.values()) / len(results)
        for metric in METRICS
        if all(r[metric] is not None for r in results.values())
    }
    return {"layers": results, "mean": mean}


def read_init(adapter_dir: str | Path) -> dict[str, Any] | None:
    """The adapter's ``lora_null_init.json`` (written at initialisation), if it has one."""
    path = Path(adapter_dir) / INIT_FILE
    return read_json(path) if path.is_file() else None


def save_verification(result: Mapping[str, Any], path: str | Path) -> None:
    write_json(path, result)


def load_verification(path: str | Path) -> dict[str, Any]:
    """A verification JSON written by :func:`save_verification` (``hf-ext lora-null verify --save-stats``)."""
    data = read_json(path)
    if not isinstance(data, dict) or "layers" not in data or "mean" not in data:
        raise FileFormatError(f"{path} is not a LoRA-Null verification file (no 'layers' and 'mean')")
    return data


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3g}"
    return f"{text} ({verdict(metric, value)})" if metric in THRESHOLDS else text


def format_verification(result: Mapping[str, Any]) -> str:
    """A Markdown table: one row per layer and the mean, with the verdict of each judged metric."""
    header = "| layer | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + " --- |" * (len(METRICS) + 1)]
    for name, values in {**result["layers"], "mean": result["mean"]}.items():
        lines.append(f"| {name} | " + " | ".join(_cell(m, values.get(m)) for m in METRICS) + " |")
    return "\n".join(lines)


def format_comparison(initial: Mapping[str, Any], trained: Mapping[str, Any]) -> str:
    """Side by side, the means of two verifications (init vs trained): A's norm should stay, B's should grow."""
    lines = ["| metric | init | trained |", "| --- | --- | --- |"]
    for metric in METRICS:
        a, b = initial["mean"].get(metric), trained["mean"].get(metric)
        lines.append(f"| {metric} | {_cell(metric, a)} | {_cell(metric, b)} |")
    if set(initial["layers"]) != set(trained["layers"]):
        lines.append(
            f"\nwarning: the files hold different layers ({len(initial['layers'])} vs {len(trained['layers'])})"
        )
    return "\n".join(lines)


def summary_scalars(result: Mapping[str, Any], prefix: str = "lora_null") -> dict[str, float]:
    """The means as TensorBoard scalars."""
    return {f"{prefix}/{metric}": value for metric, value in result["mean"].items() if value is not None}
