"""Analysis of saved per-head measurements: the table, statistics, cases and figures of the head-plasticity study.

A run directory holds one JSONL file per measurement, one line per head (``{"layer": 0, "head": 3,
...values}``): ``I_pre.jsonl`` and ``I_post.jsonl`` (ablation: ``loss_increase``,
``accuracy_drop``), ``G_pre.jsonl`` (``gradient``, ``fisher``, ``gradient_layer_normalised``),
``U.jsonl`` (``U``, ``Urel``) and ``entropy.jsonl`` (``entropy``); the per-example values behind the
first three sit beside them (``*_examples.safetensors``, see :mod:`.bootstrap`), and ``study.json`` holds
the settings that decide the model fine-tuning started from (``finetune_from``, the probe's).
Everything here works from those files alone, without the model.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io import load_tensors, read_json, write_json
from ..plotting import require_pyplot, save_figures
from ..stats import accuracy_power
from .bootstrap import (
    EXAMPLE_FILES,
    MEASURED_ON_EXAMPLES,
    example_replicates,
    mean_over_seeds_interval,
    percentile_interval,
)
from .rank_statistics import pair_statistics_rows

MEASUREMENTS = {  # column -> (file, field); I_pre and I_post by the loss metric (see measurement_sources)
    "I_pre": ("I_pre.jsonl", "loss_increase"),
    "I_post": ("I_post.jsonl", "loss_increase"),
    "G_pre": ("G_pre.jsonl", "gradient"),
    "F_pre": ("G_pre.jsonl", "fisher"),
    "U": ("U.jsonl", "U"),
    "Urel": ("U.jsonl", "Urel"),
}
ENTROPY = ("entropy.jsonl", "entropy")  # attention entropy before fine-tuning; runs before it have none
ABLATION_FIELDS = {"loss": "loss_increase", "accuracy": "accuracy_drop"}
CURVE_SUFFIXES = {"recomputed": "", "one_shot": "-one-shot", "reverse": "-reverse"}  # pruning schedules
SETTINGS_FILE = "study.json"  # the settings of the run's starting point; runs before it have none
IMPORTANT_STATIC = "important_static"
PLASTIC_UNIMPORTANT = "plastic_unimportant"


@dataclass
class CaseThresholds:
    """Percentiles that define the two cases (of I_pre and Urel over all heads)."""

    important: float = 90.0
    static: float = 30.0
    plastic: float = 90.0
    unimportant: float = 30.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not 0 <= value <= 100:
                raise ConfigError(f"{name} percentile {value:g} is outside 0..100")
        for high, low, of in (("important", "unimportant", "I_pre"), ("plastic", "static", "Urel")):
            if getattr(self, high) < getattr(self, low):
                raise ConfigError(
                    f"{high} percentile {getattr(self, high):g} is below {low} percentile {getattr(self, low):g}: "
                    f"both cut {of}, and the {high} heads must be its top share"
                )


def _json_number(value: float) -> float | None:
    """NaN and infinities are not JSON: a non-finite measurement is written as null (read back as NaN)."""
    return float(value) if np.isfinite(value) else None


def write_jsonl(path: str | Path, values: dict[str, np.ndarray]) -> None:
    """One line per head from ``[num_layers, num_heads]`` arrays of the same shape (standard JSON: NaN -> null)."""
    arrays = {k: np.asarray(v, dtype=float) for k, v in values.items()}
    layers, heads = next(iter(arrays.values())).shape
    lines = [
        json.dumps(
            {"layer": layer, "head": h, **{k: _json_number(a[layer, h]) for k, a in arrays.items()}}, allow_nan=False
        )
        for layer in range(layers)
        for h in range(heads)
    ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_jsonl(path: str | Path, field: str) -> np.ndarray:
    """``[num_layers, num_heads]`` array of ``field`` (null -> NaN); every head must appear exactly once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: is {path.parent} a head-plasticity seed directory?")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{number}: not valid JSON ({err.msg}); the file is truncated or edited"
                ) from None
    if not rows:
        raise DataError(f"{path} is empty")
    missing_keys = [r for r in rows if not {"layer", "head", field} <= set(r)]
    if missing_keys:
        raise ValueError(f"{path}: line {rows.index(missing_keys[0]) + 1} lacks 'layer', 'head' or {field!r}")
    layers, heads = max(r["layer"] for r in rows) + 1, max(r["head"] for r in rows) + 1
    values = np.full((layers, heads), np.nan)
    seen = np.zeros((layers, heads), dtype=bool)
    for r in rows:
        if seen[r["layer"], r["head"]]:
            raise ValueError(f"{path}: layer {r['layer']} head {r['head']} appears twice")
        seen[r["layer"], r["head"]] = True
        values[r["layer"], r["head"]] = np.nan if r[field] is None else r[field]
    missing = np.argwhere(~seen)
    if len(missing):
        shown = ", ".join(f"({layer}, {h})" for layer, h in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{path}: {len(missing)} of {layers * heads} heads missing (layer, head): {shown}")
    return values


def measurement_sources(metric: str = "loss") -> dict[str, tuple[str, str]]:
    """:data:`MEASUREMENTS` with I_pre and I_post as the ablation's loss increase or accuracy drop."""
    if metric not in ABLATION_FIELDS:
        raise ConfigError(f"importance metric {metric!r} is not one of {', '.join(ABLATION_FIELDS)}")
    field = ABLATION_FIELDS[metric]
    return MEASUREMENTS | {"I_pre": ("I_pre.jsonl", field), "I_post": ("I_post.jsonl", field)}


def load_measurements(run: str | Path, metric: str = "loss") -> dict[str, np.ndarray]:
    """Every column of :func:`measurement_sources` from a run directory (and ``H_pre``, the attention entropy,
    where the run measured it), checked to have one shape."""
    sources = measurement_sources(metric)
    if (Path(run) / ENTROPY[0]).is_file():
        sources["H_pre"] = ENTROPY
    columns = {name: read_jsonl(Path(run) / file, field) for name, (file, field) in sources.items()}
    shapes = {name: a.shape for name, a in columns.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"measurements disagree on [layers, heads]: {shapes}")
    return columns


def classify(importance: np.ndarray, update: np.ndarray, thresholds: CaseThresholds) -> np.ndarray:
    """Case label per head from importance (I_pre) and update size (Urel or U): important-but-static,
    plastic-but-unimportant, or ''."""
    cases = np.full(importance.shape, "", dtype=object)
    important = importance >= np.percentile(importance, thresholds.important)
    static = update <= np.percentile(update, thresholds.static)
    plastic = update >= np.percentile(update, thresholds.plastic)
    unimportant = importance <= np.percentile(importance, thresholds.unimportant)
    cases[important & static] = IMPORTANT_STATIC
    cases[plastic & unimportant] = PLASTIC_UNIMPORTANT
    return cases


def check_top_k(k: int, heads: int) -> None:
    """``k`` of a top-K overlap must be between 1 and the number of heads (at ``heads`` the overlap is 1
    by construction, beyond it meaningless)."""
    if not 1 <= k <= heads:
        raise ConfigError(f"top_k={k} but there are {heads} heads; choose top_k between 1 and {heads}")


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the ``k`` largest entries of ``a`` that are among the ``k`` largest of ``b``."""
    check_top_k(k, a.size)
    top_a = set(np.argsort(-a, axis=None, kind="stable")[:k])
    top_b = set(np.argsort(-b, axis=None, kind="stable")[:k])
    return len(top_a & top_b) / k


# Every comparison the study is about: importance before fine-tuning (ablation I_pre, gradient G_pre, Fisher
# F_pre) against what fine-tuning moved (U, Urel), importance before against after, the two importances, and
# the attention entropy before fine-tuning (H_pre, where measured) against importance and update size.
PAIRS = (
    ("I_pre", "U"),
    ("I_pre", "Urel"),
    ("G_pre", "U"),
    ("G_pre", "Urel"),
    ("F_pre", "U"),
    ("F_pre", "Urel"),
    ("I_pre", "I_post"),
    ("I_pre", "G_pre"),
    ("H_pre", "I_pre"),
    ("H_pre", "Urel"),
)


def statistics(
    columns: dict[str, np.ndarray], cases: np.ndarray, top_k: int, replicates: dict[str, np.ndarray] | None = None
) -> dict:
    """``stats.json`` of one run: for every pair of :data:`PAIRS` the Spearman rho and p over all heads, the
    mean within-layer rho, the rho partialled for depth and the top-K overlap (chance level K/N), each with a
    95% interval over resampled evaluation examples where ``replicates`` (:func:`example_replicates`) are
    given for every column measured on the examples (U and Urel are fixed); the depth trend of every column
    (Spearman with the layer index); the case counts."""
    from scipy.stats import spearmanr

    depth = np.broadcast_to(np.arange(cases.shape[0])[:, None], cases.shape).ravel().astype(float)
    stats = {"heads": int(cases.size), "top_k": top_k, "chance_top_k_overlap": top_k / cases.size}
    for x, y in PAIRS:
        if x not in columns or y not in columns:  # H_pre: runs from before it was measured
            continue
        entry = {key: float(value) for key, value in pair_statistics_rows(columns[x], columns[y], top_k).items()}
        entry["p_value"] = float(spearmanr(columns[x].ravel(), columns[y].ravel())[1])
        if replicates is not None and all(c in replicates for c in (x, y) if c in MEASURED_ON_EXAMPLES):
            resampled = pair_statistics_rows(
                *(
                    np.broadcast_to(replicates.get(c, columns[c]), next(iter(replicates.values())).shape)
                    for c in (x, y)
                ),
                top_k,
            )
            entry |= {f"{key}_ci95": percentile_interval(values).tolist() for key, values in resampled.items()}
        stats[f"{x}_vs_{y}"] = entry
    stats["depth_rho"] = {name: float(spearmanr(column.ravel(), depth)[0]) for name, column in columns.items()}
    stats["cases"] = {name: int((cases == name).sum()) for name in (IMPORTANT_STATIC, PLASTIC_UNIMPORTANT)}
    return stats


def finetune_from(run: str | Path) -> str | None:
    """The head the run fine-tuned from (``probed_head``, ``random_head`` or a causal LM's ``pretrained_head``,
    from its ``study.json``); None for runs from before it was recorded."""
    path = Path(run) / SETTINGS_FILE
    return read_json(path).get("finetune_from") if path.is_file() else None


def model_scores(base_loss: np.ndarray, base_accuracy: np.ndarray) -> dict[str, float | int]:
    """Mean accuracy and loss of the model (no head ablated) over its per-example values ``[examples]``."""
    return {"accuracy": float(np.mean(base_accuracy)), "loss": float(np.mean(base_loss)), "examples": base_loss.size}


def prediction_flips(example_accuracy: np.ndarray, base_accuracy: np.ndarray) -> dict[str, int]:
    """How many single-head ablations flip at least one prediction, and how many they flip in all:
    ``example_accuracy`` ``[num_layers, num_heads, examples]`` with each head ablated, ``base_accuracy``
    ``[examples]`` with none. A prediction flips where the example's accuracy differs from the model's (right
    to wrong or back; a causal LM: the share of its tokens predicted right); a switch between two wrong classes
    is not seen. Accuracy drops of 0 can hide flips that cancel out."""
    flipped = example_accuracy != base_accuracy
    return {
        "heads": int(np.prod(flipped.shape[:2])),
        "heads_flipping_a_prediction": int(flipped.any(-1).sum()),
        "predictions": int(flipped.size),
        "flipped_predictions": int(flipped.sum()),
    }


# The evaluation subset's majority-class share, written by the study for a classifier (older runs have none).
CHANCE_FILE = "chance.json"


def ablation_summaries(run: str | Path) -> dict[str, dict]:
    """From the per-example ablation files the run saved (I_pre, I_post; older runs have none): the accuracy and
    loss of the model each was measured on (``eval_subset``: before fine-tuning, after), and the
    :func:`prediction_flips` of its single-head ablations (``prediction_flips``)."""
    saved = {name: Path(run) / file for name, file in EXAMPLE_FILES.items() if (Path(run) / file).is_file()}
    values = {name: {k: v.double().numpy() for k, v in load_tensors(path)[0].items()} for name, path in saved.items()}
    scores, flips = {}, {}
    for name, example in values.items():
        scores[name] = model_scores(example["base_example_loss"], example["base_example_accuracy"])
        flips[name] = prediction_flips(example["example_accuracy"], example["base_example_accuracy"])
    chance = Path(run) / CHANCE_FILE
    return {"eval_subset": scores, "prediction_flips": flips} | (
        {"chance": read_json(chance)} if chance.is_file() else {}
    )


def summary(stats: dict) -> str:
    """The lines the study and ``hf-ext heads aggregate`` print for one run's ``stats.json``."""
    pairs = {pair: stats[f"I_pre_vs_{pair}"] for pair in ("Urel", "G_pre")}
    lines = [
        f"I_pre ({stats['importance_metric']}) vs Urel rho {pairs['Urel']['spearman_rho']:.3f} "
        f"(p {pairs['Urel']['p_value']:.3g}), I_pre vs G_pre rho {pairs['G_pre']['spearman_rho']:.3f}, "
        f"cases by {stats['cases_by']} {stats['cases']}; fine-tuned from {stats.get('finetune_from') or 'unrecorded'}"
    ]
    measured = stats.get("eval_subset", {})
    if measured:
        last = measured.get("I_post", measured.get("I_pre"))
        chance = stats.get("chance", {}).get("majority_class_accuracy")
        lines.append(
            f"power: {last['examples']} evaluation examples"
            + (f", chance {chance:.3f} (majority class)" if chance is not None else "")
            + f"; {accuracy_power(last['accuracy'], last['examples'])}"
        )
    for name, moment in (("I_pre", "before fine-tuning"), ("I_post", "after fine-tuning")):
        if name in measured:
            scores, flips = measured[name], stats["prediction_flips"][name]
            lines.append(
                f"{moment}: accuracy {scores['accuracy']:.3f}, loss {scores['loss']:.4f} on {scores['examples']} "
                f"examples; {flips['heads_flipping_a_prediction']} of {flips['heads']} single-head ablations flip a "
                f"prediction ({flips['flipped_predictions']} of {flips['predictions']} predictions)"
            )
    return "\n".join(lines)


def aggregate(
    run: str | Path,
    *,
    top_k: int | None = 20,
    thresholds: CaseThresholds | None = None,
    metric: str = "loss",
    cases_by: str = "Urel",
    bootstrap_samples: int = 1000,
) -> dict:
    """Write ``heads.csv``, ``stats.json`` and ``cases.json`` of one run from its saved measurements.

    ``metric``: I_pre and I_post as the ablation's loss increase or accuracy drop. ``cases_by``: the update
    size the cases are cut on (``Urel``, relative to the head's weights, or ``U``, absolute; they disagree,
    as U grows with depth). ``bootstrap_samples`` resamplings of the evaluation examples give the 95%
    intervals (0: none; runs without per-example files get none).
    """
    run, thresholds = Path(run), thresholds or CaseThresholds()
    if cases_by not in ("Urel", "U"):
        raise ConfigError(f"cases_by {cases_by!r} is not 'Urel' or 'U'")
    columns = load_measurements(run, metric)
    top_k = min(20, columns["I_pre"].size) if top_k is None else top_k
    check_top_k(top_k, columns["I_pre"].size)  # before anything is written
    replicates = example_replicates(run, metric, bootstrap_samples)
    intervals = {name: percentile_interval(values) for name, values in (replicates or {}).items()}
    cases = classify(columns["I_pre"], columns[cases_by], thresholds)
    layers, heads = cases.shape
    with open(run / "heads.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        bounds = [f"{name}_ci95_{end}" for name in intervals for end in ("low", "high")]
        writer.writerow(["layer", "head", *columns, *bounds, "case"])
        for layer in range(layers):
            for h in range(heads):
                values = [columns[c][layer, h] for c in columns]
                values += [interval[end, layer, h] for interval in intervals.values() for end in (0, 1)]
                writer.writerow([layer, h, *(f"{v:.8g}" for v in values), cases[layer, h]])
    stats = statistics(columns, cases, top_k, replicates) | {
        "importance_metric": metric,
        "cases_by": cases_by,
        "bootstrap_samples": bootstrap_samples if replicates is not None else 0,
        "thresholds_percentile": asdict(thresholds),
        "finetune_from": finetune_from(run),
        **ablation_summaries(run),
    }
    write_json(run / "stats.json", stats)
    write_json(
        run / "cases.json",
        {
            name: [{"layer": int(layer), "head": int(h)} for layer, h in np.argwhere(cases == name)]
            for name in (IMPORTANT_STATIC, PLASTIC_UNIMPORTANT)
        },
    )
    return stats


def _one_setting(stats: dict[str, dict], key: str, default):
    """The value of ``key`` every seed's statistics share (``default`` where one lacks it), else ConfigError."""
    values = {name: s.get(key, default) for name, s in stats.items()}
    if len(set(values.values())) > 1:
        raise ConfigError(f"the seeds differ in {key} ({values}); aggregate the seeds of one setting only")
    return next(iter(values.values()))


def aggregate_seeds(root: str | Path, seed_dirs: list[Path], *, bootstrap_samples: int = 1000) -> dict:
    """Across seeds: per-head mean and std of every column (``heads_across_seeds.csv``) and the per-seed
    statistics with, for every pair's statistic, the mean over seeds and its 95% interval under resampling the
    seeds (``stats_across_seeds.json``; the seeds' own ``importance_metric`` is used)."""
    root = Path(root)
    stats = {d.name: json.loads((d / "stats.json").read_text()) for d in seed_dirs}
    metric = _one_setting(stats, "importance_metric", "loss")
    _one_setting(stats, "finetune_from", None)
    per_seed = {d.name: load_measurements(d, metric) for d in seed_dirs}
    names = [c for c in per_seed[seed_dirs[0].name] if all(c in m for m in per_seed.values())]
    stacked = {c: np.stack([m[c] for m in per_seed.values()]) for c in names}
    layers, heads = stacked[names[0]].shape[1:]
    with open(root / "heads_across_seeds.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", *(f"{c}_{s}" for c in names for s in ("mean", "std"))])
        for layer in range(layers):
            for h in range(heads):
                row = [f"{fn(stacked[c][:, layer, h]):.8g}" for c in names for fn in (np.mean, np.std)]
                writer.writerow([layer, h, *row])
    summary = {"seeds": list(stats), "per_seed": stats, "bootstrap_samples": bootstrap_samples}
    for key in (f"{x}_vs_{y}" for x, y in PAIRS):
        entries = [s[key] for s in stats.values() if key in s]
        if not entries:
            continue
        summary[key] = {
            name: {
                "mean": float(np.mean(values := [e[name] for e in entries])),
                "std": float(np.std(values)),
                "seeds_ci95": mean_over_seeds_interval(values, bootstrap_samples) if bootstrap_samples else None,
            }
            for name in entries[0]
            if not name.endswith("_ci95") and name != "p_value"
        }
    write_json(root / "stats_across_seeds.json", summary)
    return summary


def plot(run: str | Path) -> list[Path]:
    """Scatter plots (I_pre vs Urel, I_pre vs G_pre, cases marked), a statistics figure (with the 95%
    intervals where the run has them), layer x head heatmaps of I_pre, I_post and Urel and, where the run
    measured it, the pruning curve, as PNG files in the run directory; returns their paths."""
    return save_figures(figures(run), run)


def figures(run: str | Path) -> dict:
    """The study's matplotlib figures by name (see :func:`plot`)."""
    plt = require_pyplot()

    run = Path(run)
    stats = json.loads((run / "stats.json").read_text())
    metric = stats.get("importance_metric", "loss")
    columns = load_measurements(run, metric)
    cases_json = json.loads((run / "cases.json").read_text())
    marked = {name: np.zeros(columns["I_pre"].shape, bool) for name in cases_json}
    for name, heads in cases_json.items():
        for head in heads:
            marked[name][head["layer"], head["head"]] = True
    out = {}
    for y, label in (("Urel", "relative update size Urel"), ("G_pre", "gradient importance G_pre")):
        fig, ax = plt.subplots(figsize=(5, 4))
        other = ~(marked[IMPORTANT_STATIC] | marked[PLASTIC_UNIMPORTANT])
        ax.scatter(columns["I_pre"][other], columns[y][other], s=14, label="other heads")
        for case, marker, size in ((IMPORTANT_STATIC, "^", 40), (PLASTIC_UNIMPORTANT, "s", 34)):
            label = case.replace("_", " but ", 1)
            ax.scatter(columns["I_pre"][marked[case]], columns[y][marked[case]], marker=marker, s=size, label=label)
        rho = stats[f"I_pre_vs_{y}"]["spearman_rho"]
        ax.set(xlabel=f"ablation importance I_pre ({ABLATION_FIELDS[metric].replace('_', ' ')})", ylabel=label)
        ax.set_title(f"Spearman rho = {rho:.3f}")
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        ax.legend(fontsize=8)
        fig.tight_layout()
        out[f"scatter_I_pre_vs_{y}"] = fig
    fig, ax = plt.subplots(figsize=(9, 3.5))
    pairs = [f"{x}_vs_{y}" for x, y in PAIRS if f"{x}_vs_{y}" in stats]
    k = stats["top_k"]
    x = np.arange(len(pairs))
    for offset, key, label in ((-0.2, "spearman_rho", "Spearman rho"), (0.2, f"top{k}_overlap", f"top-{k} overlap")):
        values = np.array([stats[p][key] for p in pairs])
        intervals = [stats[p].get(f"{key}_ci95") for p in pairs]
        errors = None
        if all(intervals):  # 95% interval over resampled evaluation examples
            errors = np.abs(np.array(intervals).T - values)
        ax.bar(x + offset, values, 0.4, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x, [p.replace("_vs_", " vs ") for p in pairs], rotation=30, fontsize=7)
    ax.axhline(k / stats["heads"], linestyle=":", color="gray", label="chance overlap")
    ax.axhline(0, linewidth=0.8, color="black")
    ax.set_title(
        f"{stats['cases'][IMPORTANT_STATIC]} important-but-static, "
        f"{stats['cases'][PLASTIC_UNIMPORTANT]} plastic-but-unimportant heads",
        fontsize=8,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["stats"] = fig
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, name in zip(axes, ("I_pre", "I_post", "Urel")):
        image = ax.imshow(columns[name], aspect="auto")
        ax.set(title=name, xlabel="head", ylabel="layer")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    out["heatmaps"] = fig
    if (run / "prune_curve.json").is_file():
        out["prune_curve"] = prune_curve_figure(read_json(run / "prune_curve.json"))
    return out


def curve_name(order: str, schedule: str) -> str:
    """The key of a pruning curve in ``prune_curve.json``: ``gradient`` (recomputed), ``gradient-one-shot``,
    ``gradient-reverse``, ...; random orders are ``random-<i>``."""
    return order + CURVE_SUFFIXES[schedule]


def _curve_style(name: str) -> tuple[str | None, dict]:
    """Legend label (None: already labelled) and line style of the curve called ``name``."""
    if name.startswith("random"):
        return ("random order" if name == "random-0" else None), {"color": "gray", "alpha": 0.6, "linewidth": 1}
    if name.endswith(CURVE_SUFFIXES["one_shot"]):
        return f"{name.removesuffix(CURVE_SUFFIXES['one_shot'])} order, ranked once", {"linestyle": "--"}
    if name.endswith(CURVE_SUFFIXES["reverse"]):
        order = name.removesuffix(CURVE_SUFFIXES["reverse"])
        return f"{order} order reversed (most important first)", {"linestyle": ":"}
    return f"{name} order, recomputed", {"marker": "o", "markersize": 3}


def _examples_title(record: dict) -> str:
    """Which examples ranked the heads and which evaluated the curves (records from before: the same ones)."""
    if "evaluation_examples" not in record:
        return "ranked and evaluated on the same examples"
    ranking, evaluation = record["ranking_examples"], record["evaluation_examples"]
    return (
        f"ranked on {len(ranking['indices'])} {ranking['split']} examples, "
        f"evaluated on {len(evaluation['indices'])} held-out {evaluation['split']} examples"
    )


def prune_curve_figure(record: dict):
    """Accuracy and loss against the share of heads removed, for every curve of ``record`` (``prune_curve.json``):
    the importance order recomputed, ranked once and reversed, and the random orders in gray."""
    plt = require_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in record["curves"].items():
        label, style = _curve_style(name)
        for ax, key in zip(axes, ("accuracy", "loss")):
            ax.plot([100 * r["share_removed"] for r in rows], [r[key] for r in rows], label=label, **style)
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.set(xlabel="heads removed (%)", ylabel=key)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"head pruning, {record['ablation']} ablation, {record['heads']} heads; {_examples_title(record)}", fontsize=9
    )
    fig.tight_layout()
    return fig
