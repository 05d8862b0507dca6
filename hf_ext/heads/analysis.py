"""Analysis of saved per-head measurements: the table, statistics, cases and figures of the head-plasticity study.

A run directory holds one JSONL file per measurement, one line per head (``{"layer": 0, "head": 3,
...values}``): ``I_pre.jsonl`` and ``I_post.jsonl`` (ablation: ``loss_increase``,
``accuracy_drop``), ``G_pre.jsonl`` (``gradient``, ``fisher``, ``gradient_layer_normalised``) and
``U.jsonl`` (``U``, ``Urel``).
Everything here works from those files alone, without the model.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io import write_json
from ..plotting import require_pyplot, save_figures

MEASUREMENTS = {  # column -> (file, field)
    "I_pre": ("I_pre.jsonl", "loss_increase"),
    "I_post": ("I_post.jsonl", "loss_increase"),
    "G_pre": ("G_pre.jsonl", "gradient"),
    "F_pre": ("G_pre.jsonl", "fisher"),
    "U": ("U.jsonl", "U"),
    "Urel": ("U.jsonl", "Urel"),
}
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


def load_measurements(run: str | Path) -> dict[str, np.ndarray]:
    """Every column of :data:`MEASUREMENTS` from a run directory, checked to have one shape."""
    columns = {name: read_jsonl(Path(run) / file, field) for name, (file, field) in MEASUREMENTS.items()}
    shapes = {name: a.shape for name, a in columns.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"measurements disagree on [layers, heads]: {shapes}")
    return columns


def classify(i_pre: np.ndarray, urel: np.ndarray, thresholds: CaseThresholds) -> np.ndarray:
    """Case label per head: important-but-static, plastic-but-unimportant, or ''."""
    cases = np.full(i_pre.shape, "", dtype=object)
    important = i_pre >= np.percentile(i_pre, thresholds.important)
    static = urel <= np.percentile(urel, thresholds.static)
    plastic = urel >= np.percentile(urel, thresholds.plastic)
    unimportant = i_pre <= np.percentile(i_pre, thresholds.unimportant)
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
# F_pre) against what fine-tuning moved (U, Urel), importance before against after, and the two importances.
PAIRS = (
    ("I_pre", "U"),
    ("I_pre", "Urel"),
    ("G_pre", "U"),
    ("G_pre", "Urel"),
    ("F_pre", "U"),
    ("F_pre", "Urel"),
    ("I_pre", "I_post"),
    ("I_pre", "G_pre"),
)


def _spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr

    rho, p = spearmanr(x, y)
    return float(rho), float(p)


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman correlation of ``x`` and ``y`` with ``z`` (here: the layer index) partialled out, from the three
    rank correlations: ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))``."""
    r_xy, r_xz, r_yz = _spearman(x, y)[0], _spearman(x, z)[0], _spearman(y, z)[0]
    denominator = np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
    return float((r_xy - r_xz * r_yz) / denominator) if denominator > 0 else math.nan


def within_layer_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over layers of the Spearman correlation among one layer's heads (layers where either column is
    constant are left out); compares heads at the same depth only."""
    rhos = [_spearman(a, b)[0] for a, b in zip(x, y) if np.ptp(a) > 0 and np.ptp(b) > 0]
    return float(np.mean(rhos)) if rhos else math.nan


def statistics(columns: dict[str, np.ndarray], cases: np.ndarray, top_k: int) -> dict:
    """``stats.json`` of one run: for every pair of :data:`PAIRS` the Spearman rho and p over all heads, the
    mean within-layer rho, the partial rho controlling for depth, and the top-K overlap with its chance level
    K/N; the depth trend of every column (Spearman with the layer index); the case counts."""
    depth = np.broadcast_to(np.arange(cases.shape[0])[:, None], cases.shape).ravel().astype(float)
    stats = {"heads": int(cases.size), "top_k": top_k, "chance_top_k_overlap": top_k / cases.size}
    for x, y in PAIRS:
        rho, p = _spearman(columns[x].ravel(), columns[y].ravel())
        stats[f"{x}_vs_{y}"] = {
            "spearman_rho": rho,
            "p_value": p,
            "within_layer_rho": within_layer_spearman(columns[x], columns[y]),
            "partial_rho_given_layer": partial_spearman(columns[x].ravel(), columns[y].ravel(), depth),
            f"top{top_k}_overlap": top_k_overlap(columns[x], columns[y], top_k),
        }
    stats["depth_rho"] = {name: _spearman(column.ravel(), depth)[0] for name, column in columns.items()}
    stats["cases"] = {name: int((cases == name).sum()) for name in (IMPORTANT_STATIC, PLASTIC_UNIMPORTANT)}
    return stats


def aggregate(run: str | Path, *, top_k: int | None = 20, thresholds: CaseThresholds | None = None) -> dict:
    """Write ``heads.csv``, ``stats.json`` and ``cases.json`` of one run from its JSONL files."""
    run, thresholds = Path(run), thresholds or CaseThresholds()
    columns = load_measurements(run)
    top_k = min(20, columns["I_pre"].size) if top_k is None else top_k
    check_top_k(top_k, columns["I_pre"].size)  # before anything is written
    cases = classify(columns["I_pre"], columns["Urel"], thresholds)
    layers, heads = cases.shape
    with open(run / "heads.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", *columns, "case"])
        for layer in range(layers):
            for h in range(heads):
                writer.writerow([layer, h, *(f"{columns[c][layer, h]:.8g}" for c in columns), cases[layer, h]])
    stats = statistics(columns, cases, top_k) | {"thresholds_percentile": asdict(thresholds)}
    write_json(run / "stats.json", stats)
    write_json(
        run / "cases.json",
        {
            name: [{"layer": int(layer), "head": int(h)} for layer, h in np.argwhere(cases == name)]
            for name in (IMPORTANT_STATIC, PLASTIC_UNIMPORTANT)
        },
    )
    return stats


def aggregate_seeds(root: str | Path, seed_dirs: list[Path]) -> dict:
    """Across seeds: per-head mean and std of every column (``heads_across_seeds.csv``) and per-seed
    statistics rows with their mean and std (``stats_across_seeds.json``)."""
    root = Path(root)
    per_seed = {d.name: load_measurements(d) for d in seed_dirs}
    stats = {d.name: json.loads((d / "stats.json").read_text()) for d in seed_dirs}
    names = list(MEASUREMENTS)
    stacked = {c: np.stack([m[c] for m in per_seed.values()]) for c in names}
    layers, heads = stacked[names[0]].shape[1:]
    with open(root / "heads_across_seeds.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "head", *(f"{c}_{s}" for c in names for s in ("mean", "std"))])
        for layer in range(layers):
            for h in range(heads):
                row = [f"{fn(stacked[c][:, layer, h]):.8g}" for c in names for fn in (np.mean, np.std)]
                writer.writerow([layer, h, *row])
    summary = {"seeds": list(stats), "per_seed": stats}
    for key in (f"{x}_vs_{y}" for x, y in PAIRS):
        rhos = np.array([s[key]["spearman_rho"] for s in stats.values() if key in s])
        if len(rhos):
            summary[f"{key}_spearman_rho"] = {"mean": float(rhos.mean()), "std": float(rhos.std())}
    write_json(root / "stats_across_seeds.json", summary)
    return summary


def plot(run: str | Path) -> list[Path]:
    """Scatter plots (I_pre vs Urel, I_pre vs G_pre, cases marked), a statistics figure and layer x head
    heatmaps of I_pre, I_post and Urel, as PNG files in the run directory; returns their paths."""
    return save_figures(figures(run), run)


def figures(run: str | Path) -> dict:
    """The study's matplotlib figures by name (see :func:`plot`)."""
    plt = require_pyplot()

    run = Path(run)
    columns = load_measurements(run)
    stats = json.loads((run / "stats.json").read_text())
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
        ax.set(xlabel="ablation importance I_pre (loss increase)", ylabel=label, title=f"Spearman rho = {rho:.3f}")
        ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        ax.legend(fontsize=8)
        fig.tight_layout()
        out[f"scatter_I_pre_vs_{y}"] = fig
    fig, ax = plt.subplots(figsize=(9, 3.5))
    pairs = [f"{x}_vs_{y}" for x, y in PAIRS]
    k = stats["top_k"]
    x = np.arange(len(pairs))
    ax.bar(x - 0.2, [stats[p]["spearman_rho"] for p in pairs], 0.4, label="Spearman rho")
    ax.bar(x + 0.2, [stats[p][f"top{k}_overlap"] for p in pairs], 0.4, label=f"top-{k} overlap")
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
    return out
