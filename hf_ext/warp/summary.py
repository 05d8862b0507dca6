"""Every arm of a WaRP study over seeds: means, 95% intervals, the table and the safety-vs-utility figure.

``rows_by_seed`` is ``{seed: eval rows}``, each as :func:`hf_ext.warp.evaluation.evaluate_run` writes them
(``{arm: {"label", "safety_accuracy", "utility_accuracy", "safety_retention"}}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ..plotting import plotting_available, require_pyplot
from ..stats import t_interval

METRICS = ("safety_accuracy", "utility_accuracy", "safety_retention")


def mean_interval(values: list[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean and Student-t interval of the mean (:func:`hf_ext.stats.t_interval`; ``nan`` bounds for a single
    value)."""
    mean, low, high = t_interval(values, confidence)
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def summarize(rows_by_seed: Mapping[int, Mapping[str, Mapping]], eval_sizes: Mapping[str, int]) -> dict:
    """Per arm (in the order of the first seed's rows): its label, per-seed values and mean/interval of each metric."""
    arms = list(next(iter(rows_by_seed.values())))
    summary = {"seeds": list(rows_by_seed), "eval_examples": dict(eval_sizes), "arms": {}}
    for arm in arms:
        rows = {seed: rows[arm] for seed, rows in rows_by_seed.items() if arm in rows}
        entry = {"label": next(iter(rows.values()))["label"], "per_seed": rows}
        for metric in METRICS:
            entry[metric] = mean_interval([row[metric] for row in rows.values()])
        summary["arms"][arm] = entry
    return summary


def _cell(stats: Mapping[str, float]) -> str:
    """Mean [interval], the interval clipped to [0, 1] (accuracies; ``eval.json`` keeps it unclipped)."""
    if math.isnan(stats["low"]):
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} [{max(stats['low'], 0.0):.3f}, {min(stats['high'], 1.0):.3f}]"


def binomial_se(accuracy: float, examples: int) -> float:
    """Standard error of one accuracy measured on ``examples`` held-out examples."""
    return math.sqrt(accuracy * (1 - accuracy) / examples) if examples else math.nan


def format_summary(summary: Mapping) -> str:
    """The table of every arm: mean and 95% interval over seeds of held-out safety and utility accuracy."""
    n = len(summary["seeds"])
    what = f"mean [95% t-interval, clipped to 0-1] over {n} seeds" if n > 1 else "one seed"
    lines = [
        f"| model | safety accuracy, {what} | utility accuracy | safety retention |",
        "| --- | --- | --- | --- |",
    ]
    for entry in summary["arms"].values():
        lines.append(
            f"| {entry['label']} | {_cell(entry['safety_accuracy'])} | {_cell(entry['utility_accuracy'])} | "
            f"{_cell(entry['safety_retention'])} |"
        )
    safety, utility = summary["eval_examples"]["safety"], summary["eval_examples"]["utility"]
    errors = {p: f"{binomial_se(p, safety):.3f} / {binomial_se(p, utility):.3f}" for p in (0.9, 0.5)}
    lines.append("")
    lines.append(
        f"Held-out examples: {safety} safety, {utility} utility; one accuracy of 0.9 on them has a binomial "
        f"standard error of {errors[0.9]} (0.5: {errors[0.5]})."
    )
    return "\n".join(lines)


def plot_safety_vs_utility(summary: Mapping, path: str | Path) -> Path | None:
    """One point per arm and seed (safety against utility accuracy), the arm's mean as a larger marker;
    ``None`` (and a message) without matplotlib."""
    if not plotting_available(Path(path).name):
        return None
    plt = require_pyplot()

    figure, axes = plt.subplots(figsize=(10, 5.5))
    colors = plt.get_cmap("tab10")
    for index, entry in enumerate(summary["arms"].values()):
        color = colors(index % 10)
        rows = list(entry["per_seed"].values())
        axes.scatter(
            [r["utility_accuracy"] for r in rows], [r["safety_accuracy"] for r in rows], color=color, alpha=0.45, s=22
        )
        axes.scatter(
            entry["utility_accuracy"]["mean"],
            entry["safety_accuracy"]["mean"],
            color=color,
            s=90,
            marker="D",
            edgecolor="k",
            label=entry["label"],
        )
    axes.set_xlabel("utility accuracy (held out)")
    axes.set_ylabel("safety accuracy (held out)")
    axes.set_title(f"WaRP arms: one point per seed ({len(summary['seeds'])}), diamond = mean")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
