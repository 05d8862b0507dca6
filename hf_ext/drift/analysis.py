"""The drift study's analysis, from its files alone: ``drift.csv``, ``drift.json`` and ``drift.png``.

Reads ``study.json``, the base dumps and every run's dumps and ``metrics.json`` (see
:mod:`hf_ext.drift.study`). Per run, text set (the task's, the off-task texts) and layer it computes, for
token-level rows and for the study's pooled rows: linear CKA, debiased CKA and cosine against the base; for
the pooled rows of the task's texts also a bootstrap interval over examples and the chance level of CKA (the
same rows with the pairing broken). Drift is ``1 - CKA``; a run's headline drift is the pooled drift averaged
over layers 1 and up (the embeddings, which LoRA does not adapt, are left out).

The verdict is read off frontiers, not single runs: per frontier (``full``, ``lora-r<rank>``) and seed the
runs at its learning rates give points (task eval loss, drift); each LoRA frontier is compared with the full
one at task-loss levels every curve reached, paired by seed (:mod:`hf_ext.frontier`): the seeds are the units.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import RunDirectoryError
from ..frontier import compare_at_matched_loss, format_comparison, past_lowest_loss
from ..io import read_json, write_json
from ..plotting import require_pyplot, save_figures
from ..stats import accuracy_power
from .measure import compare_dumps
from .metrics import gram_linear_cka
from .shards import DumpReader
from .stats import bootstrap_interval

CSV_COLUMNS = (
    "arm",
    "method",
    "rank",
    "learning_rate",
    "seed",
    "texts",
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
    "eval_loss",
    "task_metric",
)
TEXT_SETS = {"task": ("base", "dump"), "offtask": ("base-offtask", "dump-offtask")}
CHANCE_PERMUTATIONS = 20


def run_dir(root: Path, seed: int, arm: str) -> Path:
    return root / f"seed-{seed}" / arm


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


def _run_rows(root: Path, study: Mapping[str, Any], seed: int, arm: Mapping[str, Any]) -> list[dict]:
    directory = run_dir(root, seed, arm["name"])
    if not (directory / "metrics.json").is_file():
        raise RunDirectoryError(
            f"{directory} has no metrics.json: the run of seed {seed} with {arm['name']} did not finish; rerun the "
            "recipe with the same output_dir to complete it"
        )
    metrics = read_json(directory / "metrics.json")
    pooled = study["pooling"]
    rows = []
    for texts, (base_name, dump_name) in TEXT_SETS.items():
        if texts == "offtask" and not study.get("offtask_dataset"):
            continue
        base, dump = DumpReader(root / base_name), DumpReader(directory / dump_name)
        for pooling in dict.fromkeys(["tokens", pooled]):
            for layer, r in compare_dumps(base, dump, pooling=pooling, progress=False).items():
                row = {
                    "arm": arm["name"],
                    "method": arm["method"],
                    "rank": arm["rank"],
                    "learning_rate": arm["learning_rate"],
                    "seed": seed,
                    "texts": texts,
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
                    "eval_loss": metrics.get("eval_loss"),
                    "task_metric": metrics.get(study["task_metric"]),
                }
                # intervals only where the verdict is read: pooled rows of the task's texts, CKA defined
                if texts == "task" and pooling == pooled and math.isfinite(r.cka):
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


def headline_drift(rows: list[dict], pooling: str) -> dict[tuple[str, int, str], float]:
    """``{(arm, seed, texts): drift}``: pooled ``1 - CKA`` averaged over layers 1 and up, per run and text set."""
    per_run = defaultdict(list)
    for r in rows:
        if r["pooling"] == pooling and r["layer"] > 0 and math.isfinite(r["cka"]):
            per_run[(r["arm"], r["seed"], r["texts"])].append(1 - r["cka"])
    return {key: sum(values) / len(values) for key, values in per_run.items()}


def frontiers(rows: list[dict], study: Mapping[str, Any], texts: str, layer: int | None = None) -> dict:
    """``{frontier: {seed: [(eval loss, drift), ...]}}``: one point per learning rate, the runs past the seed's
    lowest loss left out (:func:`off_frontier`). ``layer=None`` uses the headline drift (mean over layers 1 and
    up), else that layer's pooled drift."""
    if layer is None:
        drift = headline_drift(rows, study["pooling"])
    else:
        drift = {
            (r["arm"], r["seed"], r["texts"]): 1 - r["cka"]
            for r in rows
            if r["pooling"] == study["pooling"] and r["layer"] == layer
        }
    losses = {(r["arm"], r["seed"]): r["eval_loss"] for r in rows}
    dropped = {(r["arm"], r["seed"]) for r in off_frontier(rows, study)}
    curves: dict[str, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for arm in study["arms"]:
        for seed in study["seeds"]:
            value = drift.get((arm["name"], seed, texts))
            if (
                value is not None
                and losses.get((arm["name"], seed)) is not None
                and (arm["name"], seed) not in dropped
            ):
                curves[arm["frontier"]][seed].append((losses[(arm["name"], seed)], value))
    return {name: dict(by_seed) for name, by_seed in curves.items()}


def off_frontier(rows: list[dict], study: Mapping[str, Any]) -> list[dict]:
    """``[{arm, seed, learning_rate, eval_loss}]`` of the runs at a learning rate above the one that reached
    their frontier's lowest loss for that seed (:func:`hf_ext.frontier.past_lowest_loss`)."""
    runs = {(r["arm"], r["seed"]): r for r in rows}
    out = []
    for name in dict.fromkeys(arm["frontier"] for arm in study["arms"]):
        arms = [arm for arm in study["arms"] if arm["frontier"] == name]
        for seed in study["seeds"]:
            mine = [runs[(arm["name"], seed)] for arm in arms if (arm["name"], seed) in runs]
            for i in past_lowest_loss([(r["learning_rate"], r["eval_loss"]) for r in mine]):
                out.append({k: mine[i][k] for k in ("arm", "seed", "learning_rate", "eval_loss")})
    return out


def compare_methods(rows: list[dict], study: Mapping[str, Any]) -> dict[str, Any]:
    """Each LoRA frontier against full fine-tuning at matched task loss, per text set: the headline drift and
    every layer's."""
    layers = sorted({r["layer"] for r in rows if r["layer"] > 0})
    comparisons = {}
    for texts in dict.fromkeys(r["texts"] for r in rows):
        curves = frontiers(rows, study, texts)
        if "full" not in curves:
            return {"skipped": "needs 'full' runs to compare with"}
        per_layer = {layer: frontiers(rows, study, texts, layer) for layer in layers}
        settings = {"levels": study["matched_levels"], "confidence": study["confidence"]}
        for name in (n for n in curves if n != "full"):
            comparisons[f"{name} vs full, {texts} texts"] = {
                "texts": texts,
                "frontier": name,
                "headline": compare_at_matched_loss(curves["full"], curves[name], **settings),
                "per_layer": {
                    str(layer): compare_at_matched_loss(c["full"], c[name], **settings)
                    for layer, c in per_layer.items()
                },
            }
    if not comparisons:
        return {"skipped": "needs 'full' and 'lora' runs"}
    return comparisons


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def arm_table(rows: list[dict], study: Mapping[str, Any]) -> list[dict]:
    """Per arm, mean and seed s.d. of the task loss, task metric and headline drift of each text set."""
    drift = headline_drift(rows, study["pooling"])
    runs = {(r["arm"], r["seed"]): r for r in rows}
    table = []
    for arm in study["arms"]:
        seeds = [s for s in study["seeds"] if (arm["name"], s) in runs]
        entry = {"arm": arm["name"], "seeds": len(seeds)}
        for key in ("eval_loss", "task_metric"):
            values = [runs[(arm["name"], s)][key] for s in seeds]
            entry[key] = (statistics.mean(values), _sd(values))
        for texts in dict.fromkeys(r["texts"] for r in rows):
            values = [drift[(arm["name"], s, texts)] for s in seeds if (arm["name"], s, texts) in drift]
            entry[f"drift_{texts}"] = (statistics.mean(values), _sd(values)) if values else None
        table.append(entry)
    return table


def _live_vs_dump(root: Path, study: Mapping[str, Any], rows: list[dict]) -> float | None:
    """Largest |CKA| difference between the last in-training measurement and the analysis of the dumps."""
    differences = []
    for seed in study["seeds"]:
        for arm in study["arms"]:
            history = read_json(run_dir(root, seed, arm["name"]) / "metrics.json").get("in_training") or []
            if not history:
                continue
            for layer, measured in history[-1]["layers"].items():
                match = [
                    r["cka"]
                    for r in rows
                    if (r["arm"], r["seed"], r["layer"], r["pooling"], r["texts"])
                    == (arm["name"], seed, int(layer), study["pooling"], "task")
                ]
                differences += [abs(measured["cka"] - m) for m in match]
    return max(differences) if differences else None


def analyze_run(root: str | Path) -> dict[str, Any]:
    """Recompute ``drift.csv`` and ``drift.json`` of a study's ``output_dir`` from its saved files."""
    root = Path(root)
    if not (root / "study.json").is_file():
        raise RunDirectoryError(f"{root} holds no study.json: point --run at the output_dir of recipes/drift.py")
    study = read_json(root / "study.json")
    if "arms" not in study:
        raise RunDirectoryError(
            f"{root} holds a drift study from before learning-rate frontiers (no arms in study.json): rerun "
            "recipes/drift.py in a new output_dir"
        )
    runs = [(seed, arm) for seed in study["seeds"] for arm in study["arms"]]
    rows = [
        row for seed, arm in tqdm(runs, desc="drift analysis", unit="run") for row in _run_rows(root, study, seed, arm)
    ]
    with open(root / "drift.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "settings": study,
        "arms": arm_table(rows, study),
        "comparison": compare_methods(rows, study),
        "off_frontier": off_frontier(rows, study),
        "live_vs_dump_max_abs_cka_difference": _live_vs_dump(root, study, rows),
        "rows": rows,
    }
    write_json(root / "drift.json", summary)
    return summary


def figures(root: str | Path) -> dict[str, Any]:
    """The study's figure: drift against task loss per text set (one colour per frontier, a point per run, the
    line through the seeds' means per learning rate), and each LoRA frontier minus full per layer at the middle
    matched loss with its interval over seeds."""
    if not (Path(root) / "drift.json").is_file():
        raise RunDirectoryError(
            f"{root} holds no drift.json: run recipes/drift.py there, or hf-ext drift analyze --run {root} first"
        )
    plt = require_pyplot()
    summary = read_json(Path(root) / "drift.json")
    study, rows = summary["settings"], summary["rows"]
    text_sets = list(dict.fromkeys(r["texts"] for r in rows))
    figure, axes = plt.subplots(1, len(text_sets) + 1, figsize=(5.5 * (len(text_sets) + 1), 4.5))
    colours = {}
    for ax, texts in zip(axes, text_sets, strict=False):
        for name, by_seed in frontiers(rows, study, texts).items():
            colour = colours.setdefault(name, f"C{len(colours)}")
            points = [p for curve in by_seed.values() for p in curve]
            ax.scatter([x for x, _ in points], [y for _, y in points], color=colour, s=12, alpha=0.5)
            means = _arm_means(rows, study, name, texts)
            ax.plot([x for x, _ in means], [y for _, y in means], color=colour, marker="o", label=name)
        base_loss = study.get("base_eval_loss")
        if base_loss is not None:
            ax.axvline(base_loss, color="k", ls=":", lw=1, label="base model loss")
        ax.set_xlabel("task loss (validation subset)")
        ax.set_ylabel(f"drift, 1 - CKA ({study['pooling']}), mean of layers 1+")
        ax.set_title(f"frontier on the {texts} texts")
        ax.legend(fontsize=8)
    ax = axes[-1]
    comparison = summary["comparison"]
    if "skipped" in comparison:
        ax.set_axis_off()
        ax.text(0.5, 0.5, comparison["skipped"], ha="center")
    else:
        for i, (label, entry) in enumerate(comparison.items()):
            layers, means, errors = [], [], []
            for layer, result in entry["per_layer"].items():
                if "levels" in result:
                    middle = result["levels"][len(result["levels"]) // 2]
                    layers.append(int(layer) + 0.1 * i)
                    means.append(middle["mean"])
                    errors.append(middle["resolution"])
            ax.errorbar(layers, means, yerr=errors, marker="o", capsize=3, ls="-", label=label)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("drift difference (LoRA - full), 95% interval over seeds")
        ax.set_title("at the middle matched task loss")
        ax.legend(fontsize=7)
    figure.tight_layout()
    return {"drift": figure}


def _arm_means(rows: list[dict], study: Mapping[str, Any], frontier: str, texts: str) -> list[tuple[float, float]]:
    drift = headline_drift(rows, study["pooling"])
    losses = {(r["arm"], r["seed"]): r["eval_loss"] for r in rows}
    means = []
    for arm in (a for a in study["arms"] if a["frontier"] == frontier):
        keys = [(arm["name"], s) for s in study["seeds"] if (arm["name"], s, texts) in drift]
        if keys:
            means.append(
                (
                    statistics.mean(losses[k] for k in keys),
                    statistics.mean(drift[(*k, texts)] for k in keys),
                )
            )
    return sorted(means)


def plot(root: str | Path) -> list[Path]:
    """Write the figures of :func:`figures` as PNG files in ``root``; return their paths."""
    return save_figures(figures(root), root)


def power_lines(study: Mapping[str, Any], table: list[dict]) -> list[str]:
    """What the study could detect, said before the result: sizes, chance, the accuracy's standard error, the
    seed-to-seed spread of the headline drift."""
    n = study["eval_examples"]
    chance = study.get("chance_task_metric")
    metrics = [e["task_metric"][0] for e in table if e["task_metric"][0] is not None]
    p = statistics.mean(metrics) if metrics else 0.5
    spreads = [e["drift_task"][1] for e in table if e.get("drift_task")]
    lines = [
        f"sizes: {len(study['seeds'])} seeds x {len(study['arms'])} arms; task scored and drift measured on {n} "
        f"validation examples"
        + (f", off-task drift on {study['offtask_examples']} texts" if study.get("offtask_examples") else ""),
        f"chance: {study['task_metric']} {chance:.3f} (majority class)" if chance is not None else "chance: n/a",
        f"base model: loss {study['base_eval_loss']:.4f}, {study['task_metric']} {study['base_task_metric']:.4f}",
    ]
    probe = study.get("frozen_base_probe")
    if probe:
        lines.append(
            f"frozen-base probe (the head alone trained, {probe['steps']} steps): loss {probe['loss']:.4f}, "
            f"accuracy {probe['accuracy']:.4f}"
        )
    lines += [
        f"{accuracy_power(p, n)}; seed-to-seed s.d. of the headline drift per arm: up to "
        f"{max(spreads, default=math.nan):.4f}",
    ]
    return lines


def format_summary(summary: Mapping[str, Any]) -> str:
    """Power, the arms (task loss, metric, drift per text set) and the comparisons at matched loss, as printed by
    the recipe and ``analyze``."""
    study = summary["settings"]
    table = summary["arms"]
    lines = power_lines(study, table)
    text_sets = [k[len("drift_") :] for k in table[0] if k.startswith("drift_")] if table else []
    lines.append(
        f"{'arm':22s} {'eval loss':>16s} {study['task_metric']:>22s} "
        + " ".join(f"{'drift ' + t:>17s}" for t in text_sets)
        + "   (mean ± s.d. over seeds; drift: 1 - CKA, mean of layers 1+)"
    )
    for entry in table:
        cells = [f"{entry[k][0]:.4f} ± {entry[k][1]:.4f}" for k in ("eval_loss", "task_metric")]
        cells += [
            f"{entry['drift_' + t][0]:.4f} ± {entry['drift_' + t][1]:.4f}" if entry.get("drift_" + t) else "n/a"
            for t in text_sets
        ]
        lines.append(f"{entry['arm']:22s} {cells[0]:>16s} {cells[1]:>22s} " + " ".join(f"{c:>17s}" for c in cells[2:]))
    past = summary.get("off_frontier") or []
    if past:
        lines.append(
            f"{len(past)} run(s) past the learning rate with their seed's lowest task loss, left off the frontier "
            "(overshoot): " + ", ".join(f"{r['arm']} seed {r['seed']} (loss {r['eval_loss']:.3f})" for r in past)
        )
    comparison = summary["comparison"]
    if "skipped" in comparison:
        return "\n".join([*lines, f"drift study: no comparison ({comparison['skipped']})"])
    for entry in comparison.values():
        lines += format_comparison(
            entry["headline"], "full", entry["frontier"], f"drift on the {entry['texts']} texts"
        )
    return "\n".join(lines)
