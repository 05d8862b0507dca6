"""The arms after phase 2, their control masks, the seeds summary and the arguments that configure them."""

import math

import pytest
import torch

from hf_ext.errors import ConfigError
from hf_ext.warp.arms import control_masks, study_arms
from hf_ext.warp.config import WarpArguments
from hf_ext.warp.summary import format_summary, mean_interval, summarize


def _masks():
    generator = torch.Generator().manual_seed(0)
    return {"a": torch.rand(20, generator=generator) < 0.3, "b": torch.rand(4, 10, generator=generator) < 0.25}


def test_control_masks_freeze_as_many_entries_per_module():
    masks = _masks()
    eigenvalues = {"a": torch.linspace(1, 0, 20), "b": torch.tensor([0.1, 5, 4, 3, 2, 1, 0.5, 0.4, 0.3, 0.2])}
    for control in ("none", "random", "eigenvalue"):
        out = control_masks(control, masks, eigenvalues, seed=1)
        for name, mask in masks.items():
            assert out[name].shape == mask.shape and out[name].dtype == torch.bool
            assert int(out[name].sum()) == (0 if control == "none" else int(mask.sum())), (control, name)
    eigen = control_masks("eigenvalue", masks, eigenvalues, seed=1)
    k = int(masks["a"].sum())
    assert eigen["a"][:k].all() and not eigen["a"][k:].any()  # sorted eigenvalues: the first k directions
    k = int(masks["b"].sum())  # 4 rows: whole columns in eigenvalue order (1, 2, ...), then part of the next
    order = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    full, rest = divmod(k, 4)
    assert eigen["b"][:, order[:full]].all() and int(eigen["b"][:, order[full]].sum()) == rest
    assert int(eigen["b"].sum(0)[order[full + 1 :]].sum()) == 0
    first, again = control_masks("random", masks, eigenvalues, seed=1), control_masks("random", masks, {}, seed=1)
    other = control_masks("random", masks, {}, seed=2)
    assert all(torch.equal(first[n], again[n]) for n in masks) and not torch.equal(first["a"], other["a"])
    with pytest.raises(ValueError, match="unknown mask control 'top'"):
        control_masks("top", masks, eigenvalues, seed=0)


def test_study_arms_names_and_learning_rates():
    args = WarpArguments(mask_controls=["random"], plain_learning_rates=[1e-3, 3e-4], full_learning_rates=[1e-5])
    arms = study_arms(args, learning_rate=1e-3)
    assert [a.name for a in arms] == ["phase3", "phase3_random", "plain", "plain_lr0.0003", "full_lr1e-05"]
    assert [a.label for a in arms] == [
        "phase 3: WaRP masks, keep 0.1, input/per_layer, lr 0.001",
        "phase 3: random masks, keep 0.1, input/per_layer, lr 0.001",
        "plain, target layers, lr 0.001",
        "plain, target layers, lr 0.0003",
        "plain, full fine-tune, lr 1e-05",
    ]
    assert [a.name for a in study_arms(WarpArguments(mask_controls=[]), learning_rate=5e-5)] == ["phase3", "plain"]


def test_swept_dimensions_name_the_arms_and_families():
    args = WarpArguments(
        mask_controls=["none", "eigenvalue"],
        keep_ratios=[0.1, 0.5],
        mask_layouts=["input/per_layer", "element/global"],
        phase3_learning_rates=[1e-4, 3e-4],
        plain_learning_rates=[1e-4, 3e-4],
    )
    arms = study_arms(args, learning_rate=1e-4)
    masked = [a for a in arms if a.kind == "masked"]
    assert len(masked) == 2 * (2 * 2 * 2 + 1)  # per lr: (importance, eigenvalue) x keeps x layouts, and none
    assert masked[0].name == "phase3_k0.1_input-per_layer_lr0.0001"
    assert "phase3_eigenvalue_k0.5_element-global_lr0.0003" in {a.name for a in masked}
    assert "phase3_none_lr0.0003" in {a.name for a in masked}
    assert len({a.name for a in arms}) == len(arms)
    families = {a.family for a in arms}
    assert {"importance k0.5 element/global", "none", "plain"} <= families and len(families) == 2 * 2 * 2 + 2
    assert args.importance_granularity == "element"
    assert WarpArguments().importance_granularity == "input"


def test_input_masks_from_element_importance_sum_each_direction():
    from hf_ext.warp.arms import layout_masks

    importance = {"a": torch.tensor([[1.0, 0.0, 5.0, 0.0], [1.0, 3.0, 0.0, 0.5]])}
    masks, _ = layout_masks(importance, 0.25, "input/per_layer")  # column sums 2, 3, 5, 0.5
    assert masks["a"].tolist() == [False, False, True, False]
    masks, _ = layout_masks(importance, 0.25, "element/global")
    assert masks["a"].tolist() == [[False, False, True, False], [False, True, False, False]]
    with pytest.raises(ValueError, match="element-wise importance"):
        layout_masks({"a": torch.ones(4)}, 0.25, "element/global")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"plain_learning_rates": []}, "plain_learning_rates is empty"),
        ({"keep_ratios": []}, "keep_ratios is empty"),
        ({"keep_ratios": [0.1, 1.0]}, "keep_ratios must lie in"),
        ({"mask_layouts": ["input/per_layer", "input/per_layer"]}, "mask_layouts repeats"),
        ({"extra_trainable": ["classifier"]}, "names the head"),
        ({"diverged_spread_ratio": 0.0}, "diverged_spread_ratio"),
        ({"full_learning_rates": [1e-4, -1.0]}, "must be positive"),
        ({"mask_controls": ["random", "random"]}, "mask_controls repeats a value"),
        ({"seeds": 0}, "seeds"),
        ({"importance": "empirical_fisher", "importance_statistic": "step"}, "importance_statistic to 'micro_batch'"),
    ],
)
def test_bad_arm_arguments_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        WarpArguments(**overrides)


def test_mean_interval_is_the_student_t_interval():
    stats = mean_interval([0.9, 0.95, 1.0])
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert stats["mean"] == pytest.approx(0.95)
    assert (stats["low"], stats["high"]) == pytest.approx((0.95 - half, 0.95 + half))
    single = mean_interval([0.7])
    assert single["mean"] == 0.7 and math.isnan(single["low"])


def _row(margin, utility, loss):
    return {
        "label": "x",
        "safety_accuracy": 1.0,
        "safety_margin": margin,
        "margin_retention": margin / 2.0,
        "safety_loss": 0.1,
        "utility_accuracy": utility,
        "utility_loss": loss,
        "diverged": "",
    }


def test_summary_pairs_importance_with_its_controls_per_seed():
    arms = study_arms(WarpArguments(mask_controls=["none", "random"]), learning_rate=1e-4)
    rows = {
        seed: {
            "phase2": _row(2.0, 0.6, 0.7),
            "phase3": _row(1.8 + shift, 0.7, 0.6),
            "phase3_none": _row(1.0 + shift, 0.72, 0.58),
            "phase3_random": _row(1.2 + 2 * shift, 0.71, 0.59),
            "plain": _row(1.0, 0.72, 0.58),
        }
        for seed, shift in ((1, 0.0), (2, 0.1), (3, 0.2))
    }
    rows[3]["phase3_none"]["diverged"] = "utility at chance (0.500, chance 0.500)"
    summary = summarize(rows, {"safety": 400, "utility": 400}, arms, chance=0.5)
    assert summary["arms"]["phase3"]["margin_retention"]["mean"] == pytest.approx(0.95)
    assert summary["arms"]["phase3_none"]["diverged"] == [3]
    paired = {p["minus"]: p for p in summary["paired"]}
    assert paired["phase3_none"]["differences"] == pytest.approx([0.4, 0.4, 0.4])  # (1.8 - 1.0) / 2 each seed
    assert paired["phase3_random"]["differences"] == pytest.approx([0.3, 0.25, 0.2])
    assert paired["phase3_none"]["utility_difference"] == pytest.approx(-0.02)
    assert summary["matched_utility"] == {}  # one learning rate: no frontier
    table = format_summary(summary)
    assert "over 3 seeds" in table and "| 1/3 |" in table and "phase3 - phase3_random: +0.250 [" in table
    assert "utility chance (majority class) 0.500" in table and "is not resolved" in table


def test_matched_utility_reads_each_curve_against_the_plain_frontier():
    args = WarpArguments(mask_controls=[], phase3_learning_rates=[1e-4, 3e-4], plain_learning_rates=[1e-4, 3e-4])
    arms = study_arms(args, learning_rate=1e-4)
    assert [a.name for a in arms] == ["phase3_lr0.0001", "phase3_lr0.0003", "plain", "plain_lr0.0003"]
    rows = {}
    for seed, shift in ((1, 0.0), (2, 0.02), (3, 0.04)):
        rows[seed] = {
            "phase2": _row(2.0, 0.6, 0.8),
            "phase3_lr0.0001": _row(1.9 - shift, 0.7, 0.68),
            "phase3_lr0.0003": _row(1.4 - shift, 0.75, 0.52),
            "plain": _row(1.6, 0.7, 0.70),
            "plain_lr0.0003": _row(0.8, 0.76, 0.50),
        }
    summary = summarize(rows, {"safety": 400, "utility": 400}, arms)
    against = summary["matched_utility"]["importance k0.1 input/per_layer - plain"]
    assert len(against["levels"]["levels"]) == 3 and all(level["mean"] > 0 for level in against["levels"]["levels"])
    # each run on its seed's plain curve: at loss 0.68 plain is 0.4 + 0.9 x 0.4 = 0.76, at 0.52 it is 0.44
    gaps = [((0.95 - shift / 2 - 0.76) + (0.70 - shift / 2 - 0.44)) / 2 for shift in (0.0, 0.02, 0.04)]
    assert against["on_reference"]["differences"] == pytest.approx(gaps)
    table = format_summary(summary)
    assert "- plain, utility loss" in table and "importance k0.1 input/per_layer - plain: +0.215 [" in table
    rows[1]["plain_lr0.0003"]["diverged"] = "features collapsed (spread 0.001 of 3.2)"
    again = summarize(rows, {"safety": 400, "utility": 400}, arms)["matched_utility"]
    again = again["importance k0.1 input/per_layer - plain"]
    assert "2 learning rates" in again["levels"]["skipped"]  # the diverged run is off
    assert again["on_reference"]["seeds"] == [2, 3] and again["on_reference"]["outside"] == [1]


def test_the_frontier_has_a_panel_per_keep_and_layout_with_the_unmasked_references_in_each(tmp_path):
    from hf_ext.warp.summary import frontier_panels, plot_frontier

    args = WarpArguments(
        mask_controls=["none", "random"],
        keep_ratios=[0.1, 0.5],
        phase3_learning_rates=[3e-4, 1e-4],
        plain_learning_rates=[1e-4, 3e-4],
    )
    arms = study_arms(args, learning_rate=1e-4)
    rows = {
        seed: {"phase2": _row(2.0, 0.6, 0.8)}
        | {a.name: _row(2.0 - a.learning_rate * 1e3 - seed * 0.1, 0.7, 0.8 - a.learning_rate * 500) for a in arms}
        for seed in (1, 2)
    }
    summary = summarize(rows, {"safety": 400, "utility": 400}, arms)
    panels = frontier_panels(summary, arms)
    assert list(panels) == ["keep 0.1, input/per_layer", "keep 0.5, input/per_layer"]
    for curves in panels.values():
        assert list(curves) == ["none", "plain", "importance", "random"]
        # learning rates in increasing order: 1e-4 then 3e-4; retention (2.0 - lr x 1e3 - 0.15) / 2 over seeds 1, 2
        assert [v for point in curves["random"] for v in point] == pytest.approx([0.75, 0.875, 0.65, 0.775])
    assert panels["keep 0.1, input/per_layer"]["none"] == panels["keep 0.5, input/per_layer"]["none"]
    path = plot_frontier(summary, arms, tmp_path / "frontier.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert frontier_panels(summary, [a for a in arms if a.family in ("none", "plain")]) == {
        "": {
            "none": panels["keep 0.1, input/per_layer"]["none"],
            "plain": panels["keep 0.1, input/per_layer"]["plain"],
        }
    }
