"""The drift study's analysis, from its files alone: ``drift.csv``, ``drift.json`` and ``drift.png``.

Reads ``study.json``, the base dump ``base/`` and every run's ``seed-<s>/<method>/dump`` and
``metrics.json`` (see :mod:`hf_ext.drift.study`). Per run and layer it computes, for token-level rows
and for the study's pooled rows: linear CKA, debiased CKA and cosine against the base; for the pooled
rows also a bootstrap interval over examples and the chance level of CKA (the same rows with the
pairing broken by a permutation of the examples). Drift is ``1 - CKA``. The tests ask whether LoRA
drifts less than full fine-tuning over (seed, layer) pairs, at all and by ``min_reduction``;
layer 0 (the embeddings, which LoRA does not adapt) is left out of the tests.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import RunDirectoryError
from ..io import read_json, write_json
from ..plotting import require_pyplot, save_figures
from .measure import compare_dumps
from .metrics import gram_linear_cka
from .shards import DumpReader
from .stats import bootstrap_interval, paired_permutation_test, significance_mark

CSV_COLUMNS = (
    "method",
    "seed",
    "layer",
    "pooling",
    "rows",
    "cka",
    "cka_low",
    "cka_high",
    "cka_chance",
    "debiased_cka",
    "cosine",
    "cosine_p05",
    "mean_vector_cosine",
    "task_metric",
)
CHANCE_PERMUTATIONS = 20


def run_dir(root: Path, seed: int, method: str) -> Path:
    return root / f"seed-{seed}" / method


def _example_groups(reader: DumpReader, pooling: str) -> list[list[int]]:
    """Row indices of each example in ``pooling`` rows."""
    if pooling != "tokens":
        return [[i] for i in range(len(reader.example_ids))]
    groups, start = [], 0
    for count in reader.token_counts:
        groups.append(list(range(start, start + count)))
        start += count
    return groups


def interval_and_chance(
    x: torch.Tensor, y: torch.Tensor, groups: list[list[int]], *, samples: int, confidence: float, seed: int = 0
) -> tuple[tuple[float, float], float]:
    """Basic bootstrap interval of linear CKA over examples (``groups`` of row indices) and its chance level.

    The chance level is the mean CKA of the same rows with the examples of ``y`` permuted (pairing broken),
    over :data:`CHANCE_PERMUTATIONS` permutations: what CKA says about two unrelated sets of this size.
    """
    k, l_ = x.double() @ x.double().T, y.double() @ y.double().T

    def rows_of(examples: torch.Tensor) -> torch.Tensor:
        return torch.tensor([row for e in examples.tolist() for row in groups[e]])

    def statistic(examples: torch.Tensor) -> float:
        rows = rows_of(examples)
        return gram_linear_cka(k[rows][:, rows], l_[rows][:, rows])

    estimate = gram_linear_cka(k, l_)
    low, high = bootstrap_interval(
        statistic, len(groups), samples=samples, confidence=confidence, seed=seed, estimate=estimate
    )
    interval = (low, min(high, 1.0))
    generator = torch.Generator().manual_seed(seed)
    chance = []
    sizes = {len(g) for g in groups}
    for _ in range(CHANCE_PERMUTATIONS):
        if len(sizes) == 1:
            order = rows_of(torch.randperm(len(groups), generator=generator))
        else:  # token rows of examples with different lengths cannot be paired across examples
            order = torch.randperm(x.shape[0], generator=generator)
        chance.append(gram_linear_cka(k, l_[order][:, order]))
    return interval, sum(chance) / len(chance)


def _run_rows(root: Path, study: Mapping[str, Any], seed: int, method: str, base: DumpReader) -> list[dict]:
    directory = run_dir(root, seed, method)
    if not (directory / "metrics.json").is_file():
        raise RunDirectoryError(
            f"{directory} has no metrics.json: the run of seed {seed} with {method} did not finish; rerun the recipe "
            "with the same output_dir to complete it"
        )
    metrics = read_json(directory / "metrics.json")
    dump = DumpReader(directory / "dump")
    pooled = study["pooling"]
    rows = []
    for pooling in dict.fromkeys(["tokens", pooled]):
        results = compare_dumps(base, dump, pooling=pooling, progress=False)
        for layer, r in results.items():
            row = {
                "method": method,
                "seed": seed,
                "layer": layer,
                "pooling": pooling,
                "rows": r.rows,
                "cka": r.cka,
                "cka_low": None,
                "cka_high": None,
                "cka_chance": None,
                "debiased_cka": r.debiased_cka,
                "cosine": r.cosine_mean,
                "cosine_p05": r.cosine_p05,
                "mean_vector_cosine": r.mean_vector_cosine,
                "task_metric": metrics.get(study["task_metric"]),
            }
            if pooling == pooled and math.isfinite(r.cka):  # no interval for a layer whose CKA is undefined
                (low, high), chance = interval_and_chance(
                    base.read_layer(layer, pooling).float(),
                    dump.read_layer(layer, pooling).float(),
                    _example_groups(base, pooling),
                    samples=study["bootstrap_samples"],
                    confidence=study["confidence"],
                )
                row |= {"cka_low": low, "cka_high": high, "cka_chance": chance}
            rows.append(row)
    return rows


def _drift(rows: list[dict], method: str, pooling: str) -> dict[tuple[int, int], float]:
    return {(r["seed"], r["layer"]): 1 - r["cka"] for r in rows if r["method"] == method and r["pooling"] == pooling}


def compare_methods(rows: list[dict], study: Mapping[str, Any]) -> dict[str, Any]:
    """LoRA against full fine-tuning: per-layer reduction of drift and the permutation tests."""
    pooling = study["pooling"]
    lora, full = _drift(rows, "lora", pooling), _drift(rows, "full", pooling)
    units = sorted(
        key for key in full if key in lora and key[1] > 0 and math.isfinite(full[key]) and math.isfinite(lora[key])
    )
    if not units:
        return {"skipped": "needs both 'full' and 'lora' runs"}
    a, b = [lora[u] for u in units], [full[u] for u in units]
    layers = sorted({layer for _, layer in units})
    per_layer = {}
    for layer in layers:
        seeds = [s for s, layer_ in units if layer_ == layer]
        la, fb = [lora[(s, layer)] for s in seeds], [full[(s, layer)] for s in seeds]
        reductions = [1 - x / y if y > 0 else math.nan for x, y in zip(la, fb, strict=True)]
        test = paired_permutation_test(la, fb)
        per_layer[str(layer)] = {
            "drift_full": sum(fb) / len(fb),
            "drift_lora": sum(la) / len(la),
            "reduction_mean": sum(reductions) / len(reductions),
            "reduction_sd": _sd(reductions),
            "reductions": reductions,
            "test_less": test.to_dict(),
        }
    return {
        "pooling": pooling,
        "units": "(seed, layer) pairs, layers >= 1",
        "less": paired_permutation_test(a, b).to_dict(),
        "reduction": paired_permutation_test(a, b, reduction=study["min_reduction"]).to_dict(),
        "per_layer": per_layer,
    }


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _live_vs_dump(root: Path, study: Mapping[str, Any], rows: list[dict]) -> float | None:
    """Largest |CKA| difference between the last in-training measurement and the analysis of the dumps."""
    differences = []
    for seed in study["seeds"]:
        for method in study["methods"]:
            history = read_json(run_dir(root, seed, method) / "metrics.json").get("in_training") or []
            if not history:
                continue
            for layer, measured in history[-1]["layers"].items():
                match = [
                    r["cka"]
                    for r in rows
                    if (r["method"], r["seed"], r["layer"], r["pooling"])
                    == (method, seed, int(layer), study["pooling"])
                ]
                differences += [abs(measured["cka"] - m) for m in match]
    return max(differences) if differences else None


def analyze_run(root: str | Path) -> dict[str, Any]:
    """Recompute ``drift.csv`` and ``drift.json`` of a study's ``output_dir`` from its saved files."""
    root = Path(root)
    if not (root / "study.json").is_file():
        raise RunDirectoryError(f"{root} holds no study.json: point --run at the output_dir of recipes/drift.py")
    study = read_json(root / "study.json")
    base = DumpReader(root / "base")
    rows = [
        row
        for seed in study["seeds"]
        for method in study["methods"]
        for row in _run_rows(root, study, seed, method, base)
    ]
    with open(root / "drift.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "settings": study,
        "task_metric": {
            "base_model": study.get("base_task_metric"),
            **{
                f"{method}/seed-{seed}": read_json(run_dir(root, seed, method) / "metrics.json").get(
                    study["task_metric"]
                )
                for seed in study["seeds"]
                for method in study["methods"]
            },
        },
        "comparison": compare_methods(rows, study),
        "live_vs_dump_max_abs_cka_difference": _live_vs_dump(root, study, rows),
        "rows": rows,
    }
    write_json(root / "drift.json", summary)
    return summary


def figures(root: str | Path) -> dict[str, Any]:
    """The study's figure (CKA heatmap, drift reduction per layer, task metric per run) as matplotlib figures."""
    if not (Path(root) / "drift.json").is_file():
        raise RunDirectoryError(
            f"{root} holds no drift.json: run recipes/drift.py there, or hf-ext drift analyze --run {root} first"
        )
    plt = require_pyplot()
    summary = read_json(Path(root) / "drift.json")
    study, rows = summary["settings"], summary["rows"]
    layers = sorted({r["layer"] for r in rows})
    columns = [(m, p) for p in dict.fromkeys(["tokens", study["pooling"]]) for m in study["methods"]]
    grid = torch.tensor(
        [
            [
                _mean([r["cka"] for r in rows if (r["method"], r["pooling"], r["layer"]) == (m, p, layer)])
                for m, p in columns
            ]
            for layer in layers
        ]
    )
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    image = axes[0].imshow(grid.numpy(), aspect="auto", cmap="viridis", vmin=float(grid.min()), vmax=1.0)
    axes[0].set_xticks(range(len(columns)), [f"{m}\n{p}" for m, p in columns])
    axes[0].set_yticks(range(len(layers)), [str(layer) for layer in layers])
    axes[0].set_ylabel("layer (0 = embeddings)")
    axes[0].set_title(f"CKA with the base (mean of {len(study['seeds'])} seeds)")
    for i in range(len(layers)):
        for j in range(len(columns)):
            dark = grid[i, j] < (float(grid.min()) + 1) / 2
            axes[0].text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w" if dark else "k", fontsize=8)
    figure.colorbar(image, ax=axes[0])
    comparison = summary["comparison"]
    if "per_layer" in comparison:
        per_layer = comparison["per_layer"]
        xs = [int(k) for k in per_layer]
        means = [per_layer[k]["reduction_mean"] for k in per_layer]
        sds = [per_layer[k]["reduction_sd"] for k in per_layer]
        axes[1].bar(xs, means, yerr=sds, capsize=4, color="tab:orange")
        for x, m, s, k in zip(xs, means, sds, per_layer, strict=True):
            axes[1].text(x, m + s, significance_mark(per_layer[k]["test_less"]["p_value"]), ha="center", va="bottom")
        axes[1].axhline(study["min_reduction"], color="k", ls="--", lw=1, label=f"{study['min_reduction']:.0%} target")
        axes[1].axhline(0, color="k", lw=0.5)
        axes[1].legend()
        less = comparison["less"]
        axes[1].set_title(
            f"drift reduction of LoRA ({study['pooling']}), p={less['p_value']:.3g} (min {less['min_p_value']:.2g})"
        )
        axes[1].set_xlabel("layer")
        axes[1].set_ylabel("1 - drift_lora / drift_full (mean ± sd over seeds)")
    else:
        axes[1].set_axis_off()
        axes[1].text(0.5, 0.5, comparison.get("skipped", ""), ha="center")
    task = summary["task_metric"]
    names = [name for name in task if name != "base_model"]
    axes[2].bar(range(len(names)), [task[n] or 0 for n in names], color="tab:green")
    axes[2].set_xticks(range(len(names)), names, rotation=30, ha="right")
    if task.get("base_model") is not None:
        axes[2].axhline(task["base_model"], color="k", ls="--", lw=1, label="base model")
        axes[2].legend(loc="lower right")
    axes[2].set_ylim(0, 1)
    axes[2].set_title(f"task metric: {study['task_metric']} (validation)")
    figure.tight_layout()
    return {"drift": figure}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def plot(root: str | Path) -> list[Path]:
    """Write the figures of :func:`figures` as PNG files in ``root``; return their paths."""
    return save_figures(figures(root), root)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The task metric of every run, drift per layer and the tests, as printed by the recipe and ``analyze``."""
    comparison = summary["comparison"]
    lines = [f"task metric ({summary['settings']['task_metric']} on the validation split):"]
    lines += [
        f"  {name:16s} {value if value is None else round(value, 4)}" for name, value in summary["task_metric"].items()
    ]
    if "per_layer" not in comparison:
        return "\n".join([*lines, f"drift study: no comparison ({comparison['skipped']})"])
    lines += [
        f"drift (1 - CKA, {comparison['pooling']} pooling), mean over seeds:",
        "  layer  full    lora    reduction",
    ]
    for layer, values in comparison["per_layer"].items():
        lines.append(
            f"  {layer:>5}  {values['drift_full']:.4f}  {values['drift_lora']:.4f}  "
            f"{values['reduction_mean']:+.1%} ± {values['reduction_sd']:.1%}"
        )
    for key in ("less", "reduction"):
        test = comparison[key]
        margin = f" by >= {test['reduction']:.0%}" if key == "reduction" else ""
        lines.append(
            f"LoRA drifts less{margin}: p = {test['p_value']:.4g} "
            f"(n = {test['n']}, smallest possible p {test['min_p_value']:.3g})"
        )
    return "\n".join(lines)
