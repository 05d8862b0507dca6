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
        "phase 3: WaRP masks",
        "phase 3: random masks",
        "plain, target layers, lr 0.001",
        "plain, target layers, lr 0.0003",
        "plain, full fine-tune, lr 1e-05",
    ]
    assert [a.name for a in study_arms(WarpArguments(mask_controls=[]), learning_rate=5e-5)] == ["phase3", "plain"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"plain_learning_rates": []}, "plain_learning_rates is empty"),
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


def test_summary_table_has_every_arm_with_its_interval():
    row = lambda s, u: {"label": "x", "safety_accuracy": s, "utility_accuracy": u, "safety_retention": s}  # noqa: E731
    rows = {1: {"phase2": row(1.0, 0.5), "phase3": row(0.9, 0.9)}, 2: {"phase2": row(1.0, 0.6), "phase3": row(0.8, 1)}}
    summary = summarize(rows, {"safety": 200, "utility": 100})
    assert list(summary["arms"]) == ["phase2", "phase3"] and summary["seeds"] == [1, 2]
    assert summary["arms"]["phase3"]["safety_accuracy"]["mean"] == pytest.approx(0.85)
    table = format_summary(summary)
    assert "over 2 seeds" in table and "0.850 [" in table and "200 safety, 100 utility" in table
