import pytest
import torch
from torch import nn

from hf_ext.errors import TrainingDivergedError
from hf_ext.warp.importance import ImportanceAccumulator
from hf_ext.warp.masking import build_masks, top_k_masks


def _grads_of_two_steps():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    batches = [torch.randn(4, 5) for _ in range(2)]
    return layer, batches


@pytest.mark.parametrize("kind", ["abs", "squared"])
def test_accumulator_is_mean_over_steps_of_gradient_magnitude(kind):
    layer, batches = _grads_of_two_steps()
    element = ImportanceAccumulator({"w": layer.weight}, kind=kind, statistic="step")
    per_input = ImportanceAccumulator({"w": layer.weight}, kind=kind, granularity="input", statistic="step")
    expected = torch.zeros(3, 5)
    for x in batches:
        layer.zero_grad()
        layer(x).pow(3).sum().backward()
        (g,) = torch.autograd.grad(layer(x).pow(3).sum(), layer.weight)
        expected += g.abs() if kind == "abs" else g.square()
        assert element.update() and per_input.update()
        with torch.no_grad():
            layer.weight -= 0.1 * layer.weight.grad
    torch.testing.assert_close(element.mean()["w"], expected / 2)
    torch.testing.assert_close(per_input.mean()["w"], expected.sum(0) / 2)
    assert element.steps == 2 and element.sums["w"].shape == (3, 5) and per_input.sums["w"].shape == (5,)


def test_loss_scale_is_divided_out():
    layer, (x, _) = _grads_of_two_steps()
    layer(x).sum().backward()
    plain = ImportanceAccumulator({"w": layer.weight}, statistic="step")
    plain.update()
    layer.weight.grad *= 1024
    scaled = ImportanceAccumulator({"w": layer.weight}, statistic="step")
    scaled.update(grad_scale=1024.0)
    torch.testing.assert_close(scaled.mean()["w"], plain.mean()["w"])


def test_non_finite_step_is_skipped_warned_and_counted():
    layer, (x, _) = _grads_of_two_steps()
    layer(x).sum().backward()
    accumulator = ImportanceAccumulator({"w": layer.weight, "b": layer.bias}, statistic="step")
    accumulator.update()
    good = accumulator.mean()["w"].clone()
    layer.bias.grad[0] = float("nan")
    with pytest.warns(UserWarning, match="non-finite"):
        assert accumulator.update() is False
    assert (accumulator.steps, accumulator.skipped_steps) == (1, 1)
    torch.testing.assert_close(accumulator.mean()["w"], good)


def test_no_finite_step_is_an_error():
    layer, _ = _grads_of_two_steps()
    layer.weight.grad = torch.full_like(layer.weight, float("inf"))
    accumulator = ImportanceAccumulator({"w": layer.weight}, statistic="step")
    with pytest.warns(UserWarning):
        accumulator.update()
    with pytest.raises(TrainingDivergedError, match="1 step.* had non-finite gradients and none was finite; lower"):
        accumulator.mean()


def test_state_round_trip():
    layer, (x, _) = _grads_of_two_steps()
    layer(x).sum().backward()
    accumulator = ImportanceAccumulator({"w": layer.weight}, statistic="step")
    accumulator.update()
    other = ImportanceAccumulator({"w": layer.weight}, statistic="step")
    other.load_state_dict(accumulator.state_dict())
    assert other.steps == 1
    torch.testing.assert_close(other.mean()["w"], accumulator.mean()["w"])


@pytest.mark.parametrize("shape", [(37,), (13, 29), (64, 50)])
@pytest.mark.parametrize("keep_ratio", [0.01, 0.1, 0.5, 0.93])
def test_per_layer_masks_realise_keep_ratio_within_one_element(shape, keep_ratio):
    scores = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    masks, info = build_masks({"a": scores}, keep_ratio)
    n = scores.numel()
    assert abs(int(masks["a"].sum()) - keep_ratio * n) <= 1
    assert info.frozen["a"] == int(masks["a"].sum()) and info.total["a"] == n
    if masks["a"].any() and not masks["a"].all():
        assert scores[masks["a"]].min() >= scores[~masks["a"]].max()  # the frozen ones are the most important


def test_ties_are_broken_to_exactly_k():
    scores = {"a": torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0]), "b": torch.tensor([2.0, 3.0])}
    masks, threshold = top_k_masks(scores, 3)
    assert threshold == 2.0
    assert masks["a"].tolist() == [False, True, True, False, False] and masks["b"].tolist() == [False, True]


def test_global_threshold_is_one_quantile_over_all_layers():
    gen = torch.Generator().manual_seed(0)
    scores = {"low": torch.rand(100, generator=gen), "high": torch.rand(300, generator=gen) + 0.5}
    masks, info = build_masks(scores, 0.25, "global")
    everything = torch.cat([scores["low"], scores["high"]])
    assert sum(int(m.sum()) for m in masks.values()) == 100
    assert info.thresholds["global"] == pytest.approx(torch.topk(everything, 100).values.min().item())
    assert info.frozen["high"] > info.frozen["low"]


def test_zero_importance_layer_with_global_threshold():
    masks, info = build_masks({"dead": torch.zeros(10), "live": torch.rand(10) + 1}, 0.5, "global")
    assert info.frozen == {"dead": 0, "live": 10}


@pytest.mark.parametrize("keep_ratio", [0.0, 1.0, -0.1, 1.5])
def test_keep_ratio_outside_open_interval_is_an_error(keep_ratio):
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\)"):
        build_masks({"a": torch.rand(4)}, keep_ratio)


def test_bad_choices_are_errors():
    with pytest.raises(ValueError, match="kind must be one of"):
        ImportanceAccumulator({"w": torch.zeros(2, 2)}, kind="l2")
    with pytest.raises(ValueError, match="threshold must be one of"):
        build_masks({"a": torch.rand(4)}, 0.5, "layerwise")


def test_importance_against_eigenvalue_ranking_with_its_chance_level():
    from hf_ext.warp.importance import importance_vs_eigenvalues

    eigenvalues = {"a": torch.arange(10, 0, -1).float(), "b": torch.arange(10, 0, -1).float()}
    importance = {"a": torch.arange(10, 0, -1).float(), "b": torch.ones(3, 10) * torch.arange(10).float()}
    result = importance_vs_eigenvalues(importance, eigenvalues, keep_ratio=0.2)
    assert result["a"] == {"spearman": pytest.approx(1.0), "top_k": 2, "overlap": 2, "chance_overlap": 0.4}
    assert result["b"]["spearman"] == pytest.approx(-1.0) and result["b"]["overlap"] == 0  # element scores, reversed


def test_the_old_importance_name_names_the_new_one(tmp_path):
    import runpy

    from recipes_util import ROOT

    from hf_ext.errors import ConfigError
    from hf_ext.parsing import parse_config

    types = runpy.run_path(str(ROOT / "recipes" / "warp.py"))["ARGUMENT_TYPES"]
    config = str(ROOT / "recipes" / "configs" / "warp_minilm.json")
    with pytest.raises(ConfigError, match=r"importance='fisher' was renamed: write 'squared'"):
        parse_config(types, [config, f"output_dir={tmp_path}", "importance=fisher"])
    assert parse_config(types, [config, f"output_dir={tmp_path}", "importance=squared"])[2].importance == "squared"
    parsed = parse_config(types, [config, f"output_dir={tmp_path}", "importance=empirical_fisher"])
    assert parsed[2].importance == "empirical_fisher"
    with pytest.raises(ConfigError, match="set importance_statistic to 'micro_batch'"):
        parse_config(
            types, [config, f"output_dir={tmp_path}", "importance=empirical_fisher", "importance_statistic=step"]
        )


def test_importance_after_training_is_the_mean_batch_gradient_in_eval_mode_and_changes_nothing():
    from hf_ext.warp.importance import importance_after_training
    from hf_ext.warp.masking import mask_overlap

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, y):
            return type("Out", (), {"loss": torch.nn.functional.cross_entropy(self.net(x), y)})()

    wrapped = WithLoss().train()
    batches = [{"x": torch.randn(3, 6), "y": torch.tensor([0, 1, 1])} for _ in range(3)]
    weight = model[0].weight
    expected = []
    with torch.no_grad():
        before = weight.clone()
    for batch in batches:
        model.eval()
        (grad,) = torch.autograd.grad(wrapped(**batch).loss, weight)
        expected.append(grad.abs())
    model.train()
    result = importance_after_training(wrapped, {"w": weight}, batches, granularity="element").mean()["w"]
    torch.testing.assert_close(result, sum(expected) / 3)
    assert wrapped.training and weight.grad is None and torch.equal(weight, before)
    overlap = mask_overlap(
        {"w": torch.tensor([True, True, False, False])}, {"w": torch.tensor([True, False, True, False])}
    )
    assert overlap == {"w": {"shared": 0.5, "chance": 0.5}}
