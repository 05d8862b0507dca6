"""Every arm of a WaRP study over seeds: means and 95% intervals, the paired verdicts, the table and the figures.

``rows_by_seed`` is ``{seed: eval rows}``, each as :func:`hf_ext.warp.evaluation.evaluate_run` writes them.
The verdict is read two ways, the seed as the unit:

- at one learning rate: importance masks minus each control (no masks, random, top-eigenvalue with the same
  keep_ratio and layout; the plain and full fine-tunes), paired per seed, the utility difference beside it;
- at matched utility (with two or more learning rates): each arm's curve of (held-out utility loss, safety
  margin retention) over the learning rates against the plain target-layer arm's (:mod:`hf_ext.frontier`;
  diverged runs and runs past a seed's lowest utility loss are left off), and importance minus random /
  eigenvalue per keep_ratio and layout (and minus no masks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..frontier import compare_at_matched_loss, compare_on_reference_curve, past_lowest_loss
from ..plotting import plotting_available, require_pyplot
from ..stats import accuracy_power, t_interval
from .arms import Arm

METRICS = (
    "margin_retention",
    "safety_margin",
    "safety_loss",
    "safety_accuracy",
    "safety_retention",
    "utility_accuracy",
    "utility_loss",
    "ood_flagged_harmful",
    "ood_flagged_benign",
    "head_cosine",
)
OUTCOME = "margin_retention"


def mean_interval(values: list[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean and Student-t interval of the mean (:func:`hf_ext.stats.t_interval`; ``nan`` bounds for a single
    value)."""
    mean, low, high = t_interval(values, confidence)
    return {"mean": mean, "low": low, "high": high, "n": len(values)}


def summarize(
    rows_by_seed: Mapping[int, Mapping[str, Mapping]],
    eval_sizes: Mapping[str, int],
    arms: Sequence[Arm] = (),
    *,
    chance: float | None = None,
) -> dict:
    """Per arm (in the order of the first seed's rows): its label, per-seed values, mean/interval of each metric
    and the seeds flagged diverged; then the paired verdicts over ``arms``."""
    names = list(next(iter(rows_by_seed.values())))
    summary = {
        "seeds": list(rows_by_seed),
        "eval_examples": dict(eval_sizes),
        "utility_chance": chance,
        "arms": {},
    }
    for arm in names:
        rows = {seed: rows[arm] for seed, rows in rows_by_seed.items() if arm in rows}
        entry = {"label": next(iter(rows.values()))["label"], "per_seed": rows}
        for metric in METRICS:
            values = [row[metric] for row in rows.values() if metric in row]
            if values and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                entry[metric] = mean_interval(values)
        entry["diverged"] = [seed for seed, row in rows.items() if row.get("diverged")]
        summary["arms"][arm] = entry
    summary["paired"] = paired_at_learning_rate(rows_by_seed, arms)
    summary["matched_utility"] = compare_at_matched_utility(rows_by_seed, arms)
    return summary


def _paired(rows_by_seed, first: str, second: str) -> dict | None:
    """``first - second`` of the outcome per seed with both, and the utility accuracy difference beside it."""
    seeds = [s for s, rows in rows_by_seed.items() if first in rows and second in rows]
    if len(seeds) < 2:
        return None
    differences = [rows_by_seed[s][first][OUTCOME] - rows_by_seed[s][second][OUTCOME] for s in seeds]
    utility = [rows_by_seed[s][first]["utility_accuracy"] - rows_by_seed[s][second]["utility_accuracy"] for s in seeds]
    return {
        "seeds": seeds,
        "differences": differences,
        **mean_interval(differences),
        "utility_difference": sum(utility) / len(utility),
    }


def _compared(arm: Arm, other: Arm) -> bool:
    """``other`` is a control of importance arm ``arm``: no masks, plain or full at its learning rate, or random /
    eigenvalue masks with its keep_ratio and layout too."""
    if other.learning_rate != arm.learning_rate or other is arm:
        return False
    if other.kind != "masked" or other.masks == "none":
        return True
    return other.masks != "importance" and (other.keep_ratio, other.layout) == (arm.keep_ratio, arm.layout)


def paired_at_learning_rate(rows_by_seed, arms: Sequence[Arm]) -> list[dict]:
    """Importance masks minus each control at the same learning rate (:func:`_compared`), per seed."""
    out = []
    for arm in arms:
        if arm.kind != "masked" or arm.masks != "importance":
            continue
        for other in arms:
            result = _paired(rows_by_seed, arm.name, other.name) if _compared(arm, other) else None
            if result is not None:
                control = other.masks if other.kind == "masked" else other.kind
                out.append({"arm": arm.name, "minus": other.name, "label": arm.family, "control": control} | result)
    return out


def _curves(rows_by_seed, arms: Sequence[Arm], family: str) -> dict[int, list[tuple[float, float]]]:
    """``{seed: [(utility loss, outcome), ...]}`` of one family over its learning rates; diverged runs (a failed
    optimisation: collapsed features score the utility loss of a uniform guess) and overshoots are left off."""
    members = [a for a in arms if a.family == family]
    curves = {}
    for seed, rows in rows_by_seed.items():
        runs = [
            (a.learning_rate, rows[a.name]) for a in members if a.name in rows and not rows[a.name].get("diverged")
        ]
        overshoots = set(past_lowest_loss([(rate, row["utility_loss"]) for rate, row in runs]))
        curves[seed] = [
            (row["utility_loss"], row[OUTCOME])
            for index, (_, row) in enumerate(runs)
            if index not in overshoots and math.isfinite(row[OUTCOME])
        ]
    return curves


def compare_at_matched_utility(rows_by_seed, arms: Sequence[Arm]) -> dict:
    """Each masked and full family against the plain frontier, and importance minus no masks / random /
    eigenvalue per keep_ratio and layout, at matched held-out utility loss (``{}`` with one learning rate per
    family): at loss levels every seed's curves reached (``levels``), and each run read on the reference curve
    of its own seed at its own loss (``on_reference``: no range common to all seeds needed)."""
    families = list(dict.fromkeys(a.family for a in arms))
    if "plain" not in families or sum(a.family == "plain" for a in arms) < 2:
        return {}
    curves = {family: _curves(rows_by_seed, arms, family) for family in families}
    pairs = {f"{family} - plain": ("plain", family) for family in families if family != "plain"}
    for family in families:
        if family.startswith("importance "):
            for control in ("none", "random", "eigenvalue"):
                twin = control if control == "none" else control + family[len("importance") :]
                if twin in curves:
                    pairs[f"{family} - {control}"] = (twin, family)
    return {
        name: {
            "levels": compare_at_matched_loss(curves[reference], curves[other]),
            "on_reference": compare_on_reference_curve(curves[reference], curves[other]),
        }
        for name, (reference, other) in pairs.items()
    }


def _cell(stats: Mapping[str, float] | None, clip: bool = False) -> str:
    """Mean [interval] (accuracies clipped to [0, 1]; ``eval.json`` keeps them unclipped)."""
    if stats is None:
        return "-"
    if math.isnan(stats["low"]):
        return f"{stats['mean']:.3f}"
    low, high = (max(stats["low"], 0.0), min(stats["high"], 1.0)) if clip else (stats["low"], stats["high"])
    return f"{stats['mean']:.3f} [{low:.3f}, {high:.3f}]"


def _level_line(level: Mapping) -> str:
    return (
        f"utility loss {level['loss']:.3f}: {level['mean']:+.3f} [{level['low']:+.3f}, {level['high']:+.3f}] "
        f"p = {level['p_two_sided']:.3g} (smallest possible {level['min_p']:.3g})"
    )


def format_summary(summary: Mapping) -> str:
    """The table of every arm (mean and 95% interval over seeds), the paired verdicts and the power lines."""
    n = len(summary["seeds"])
    what = f"mean [95% t-interval] over {n} seeds" if n > 1 else "one seed"
    lines = [
        f"| model | safety margin retention, {what} | safety accuracy | safety loss | utility accuracy | "
        "utility loss | OOD harmful flagged | diverged seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in summary["arms"].values():
        ood = entry.get("ood_flagged_harmful")
        ood_cell = "-" if ood is None else f"{ood['mean']:.3f}"
        lines.append(
            f"| {entry['label']} | {_cell(entry.get('margin_retention'))} | "
            f"{_cell(entry.get('safety_accuracy'), clip=True)} | {_cell(entry.get('safety_loss'))} | "
            f"{_cell(entry.get('utility_accuracy'), clip=True)} | {_cell(entry.get('utility_loss'))} | "
            f"{ood_cell} | "
            f"{len(entry['diverged'])}/{len(entry['per_seed'])} |"
        )
    lines += ["", *format_verdicts(summary), "", *format_power(summary)]
    return "\n".join(lines)


def format_verdicts(summary: Mapping) -> list[str]:
    lines = []
    if summary.get("paired"):
        lines.append(
            "Importance masks minus a control at the same learning rate (margin retention, paired per seed, 95% t "
            "interval; the utility accuracy difference beside it):"
        )
        for p in summary["paired"]:
            lines.append(
                f"  {p['arm']} - {p['minus']}: {p['mean']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] "
                f"(utility accuracy {p['utility_difference']:+.3f})"
            )
    matched = summary.get("matched_utility") or {}
    if matched:
        lines.append("At matched held-out utility loss, levels every seed reached (seeds paired, 95% t interval):")
        for name, comparison in matched.items():
            levels = comparison["levels"]
            if "skipped" in levels:
                lines.append(f"  {name}: not compared ({levels['skipped']})")
                continue
            lines += [f"  {name}, {_level_line(level)}" for level in levels["levels"]]
        lines.append(
            "Each run read on the reference arm's curve of its own seed at its own utility loss (a seed's difference "
            "is the mean over its runs inside the reference's range; 95% t interval over those seeds):"
        )
        for name, comparison in matched.items():
            lines.append(f"  {name}: {_on_reference_line(comparison['on_reference'])}")
    return lines


def _on_reference_line(comparison: Mapping) -> str:
    if "skipped" in comparison:
        return f"not compared ({comparison['skipped']})"
    outside = (
        f"; outside the range: seeds {', '.join(map(str, comparison['outside']))}" if comparison["outside"] else ""
    )
    return (
        f"{comparison['mean']:+.3f} [{comparison['low']:+.3f}, {comparison['high']:+.3f}] "
        f"p = {comparison['p_two_sided']:.3g} (smallest possible {comparison['min_p']:.3g}; "
        f"{len(comparison['seeds'])} seeds, {sum(comparison['runs'])} runs{outside})"
    )


def format_power(summary: Mapping) -> list[str]:
    """What differences these seeds and held-out examples can resolve."""
    lines = []
    widths = [(p["high"] - p["low"]) / 2 for p in summary.get("paired", []) if math.isfinite(p["high"])]
    if widths:
        lines.append(
            f"Power: {len(summary['seeds'])} seeds; a paired margin-retention difference smaller than "
            f"{min(widths):.3f}-{max(widths):.3f} (the intervals' half-widths) is not resolved."
        )
    safety, utility = summary["eval_examples"]["safety"], summary["eval_examples"]["utility"]
    lines.append(f"Held-out safety examples: {safety}; {accuracy_power(0.9, safety)}.")
    chance = summary.get("utility_chance")
    chance_text = "" if chance is None else f"; utility chance (majority class) {chance:.3f}"
    lines.append(f"Held-out utility examples: {utility}{chance_text}; {accuracy_power(0.5, utility)}.")
    return lines


def plot_safety_vs_utility(summary: Mapping, path: str | Path) -> Path | None:
    """One point per arm and seed (safety margin retention against utility accuracy), the arm's mean as a larger
    marker; ``None`` (and a message) without matplotlib."""
    if not plotting_available(Path(path).name):
        return None
    plt = require_pyplot()
    figure, axes = plt.subplots(figsize=(10, 5.5))
    colors = plt.get_cmap("tab20")
    for index, entry in enumerate(summary["arms"].values()):
        if OUTCOME not in entry:
            continue
        color = colors(index % 20)
        rows = list(entry["per_seed"].values())
        axes.scatter([r["utility_accuracy"] for r in rows], [r[OUTCOME] for r in rows], color=color, alpha=0.45, s=22)
        axes.scatter(
            entry["utility_accuracy"]["mean"],
            entry[OUTCOME]["mean"],
            color=color,
            s=90,
            marker="D",
            edgecolor="k",
            label=entry["label"],
        )
    axes.set_xlabel("utility accuracy (held out)")
    axes.set_ylabel("safety margin retention (held out, / phase 2)")
    axes.set_title(f"WaRP arms: one point per seed ({len(summary['seeds'])}), diamond = mean")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


# the unmasked arms, drawn in every panel; distinct markers tell them apart where an arm has one learning rate
REFERENCE_STYLES = {"none": (":", "s"), "plain": ("-", "o"), "full": ("--", "^")}
MASK_COLORS = {"importance": "tab:red", "random": "tab:blue", "eigenvalue": "tab:green"}


def frontier_panels(summary: Mapping, arms: Sequence[Arm]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """What :func:`plot_frontier` draws: per panel (``"keep <k>, <layout>"``; ``""`` without masked arms) per curve
    (``none``, ``plain``, ``full``, then the mask types), the ``(utility loss, margin retention)`` means over
    seeds of its arms in increasing learning-rate order."""

    def curve(members) -> list[tuple[float, float]]:
        entries = [summary["arms"].get(a.name, {}) for a in sorted(members, key=lambda a: a.learning_rate)]
        return [
            (e["utility_loss"]["mean"], e[OUTCOME]["mean"]) for e in entries if OUTCOME in e and "utility_loss" in e
        ]

    references = {family: curve(a for a in arms if a.family == family) for family in REFERENCE_STYLES}
    references = {family: points for family, points in references.items() if points}
    masked = [a for a in arms if a.family not in REFERENCE_STYLES]
    panels = {}
    for setting in dict.fromkeys((a.keep_ratio, a.layout) for a in masked):
        curves = {
            m: curve(a for a in masked if a.masks == m and (a.keep_ratio, a.layout) == setting) for m in MASK_COLORS
        }
        panels[f"keep {setting[0]:g}, {setting[1]}"] = {**references, **{m: c for m, c in curves.items() if c}}
    return panels or {"": references}


def plot_frontier(summary: Mapping, arms: Sequence[Arm], path: str | Path) -> Path | None:
    """Safety margin retention against held-out utility loss (the matched-utility reading's axis, drawn falling
    to the right), one panel per keep_ratio and layout (:func:`frontier_panels`): each mask type's curve over its
    learning rates, the unmasked arms (no masks, plain, full) in every panel; means over seeds, diverged seeds
    included. ``None`` without matplotlib."""
    if not plotting_available(Path(path).name):
        return None
    plt = require_pyplot()
    panels = frontier_panels(summary, arms)
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(4 * columns + 1.5, 3.4 * rows + 0.8), sharex=True, sharey=True, layout="constrained"
    )
    grid = list(getattr(grid, "flat", [grid]))
    legend = {}
    for axes, (title, curves) in zip(grid, panels.items()):
        for name, points in curves.items():
            if name in REFERENCE_STYLES:
                linestyle, marker = REFERENCE_STYLES[name]
                (line,) = axes.plot(*zip(*points), color="k", linestyle=linestyle, marker=marker, markersize=4)
                legend.setdefault(name, line)
            else:
                (line,) = axes.plot(*zip(*points), "-", color=MASK_COLORS[name], marker="o")
                legend.setdefault(f"{name} masks", line)
        axes.set_title(title, fontsize=9)
        axes.grid(alpha=0.3)
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    grid[0].invert_xaxis()  # shared: lower utility loss (better utility) to the right in every panel
    figure.supxlabel("held-out utility loss (mean over seeds; better to the right)")
    figure.supylabel("safety margin retention (mean over seeds)")
    figure.suptitle(
        f"WaRP: safety retention against utility, a point per learning rate ({len(summary['seeds'])} seeds)"
    )
    if legend:
        figure.legend(legend.values(), legend.keys(), loc="outside right upper", fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
