"""Head pruning: the planted toy where recomputing importance matters, one-shot and reverse orders, and a real
model's curves ranked on one set of batches and evaluated on another."""

import pytest
import torch

from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.heads.gates import HeadGates, mean_head_outputs
from hf_ext.heads.importance import ablation_importance
from hf_ext.heads.pruning import gated_loss, iterative_pruning, one_shot_order, prune_curve, scheduled
from hf_ext.models import tiny_model

# Planted toy, 2 layers x 3 heads. Heads (0, 0) and (0, 1) carry the same signal (worth 5 while either is
# open); the others carry 1, 2, 3, 4 on their own. Accuracy is the share of the total worth (15) still open.
SHAPE = (2, 3)
WORTH = torch.tensor([[0.0, 0.0, 1.0], [2.0, 3.0, 4.0]])


def _toy_accuracy(gates: torch.Tensor) -> float:
    shared = 5.0 * float(max(gates[0, 0], gates[0, 1]))
    return (shared + float((WORTH * gates).sum())) / 15.0


def _toy_evaluate(gates):
    accuracy = _toy_accuracy(gates)
    return 1 - accuracy, accuracy


def _toy_ablation(gates: torch.Tensor) -> torch.Tensor:
    """What closing each head costs at the current gates (0 for a closed head)."""
    cost = torch.zeros(SHAPE)
    for layer, head in torch.nonzero(gates).tolist():
        closed = gates.clone()
        closed[layer, head] = 0
        cost[layer, head] = _toy_accuracy(gates) - _toy_accuracy(closed)
    return cost


def test_recomputed_importance_gives_a_monotone_curve_that_one_shot_importance_does_not():
    calls = []

    def recomputed(gates):
        calls.append(gates.clone())
        return _toy_ablation(gates)

    curve = iterative_pruning(recomputed, _toy_evaluate, SHAPE, step=1 / 6)
    accuracies = [row.accuracy for row in curve]
    assert [row.heads_removed for row in curve] == list(range(7)) and accuracies[0] == 1.0 and accuracies[-1] == 0
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:]))  # monotone in the heads removed
    assert len(calls) == 6 and [int(g.sum()) for g in calls] == [6, 5, 4, 3, 2, 1]  # recomputed every round
    # First (0, 0) (redundant, costs nothing), then (0, 2) worth 1: the twin (0, 1) is now worth 5 and kept.
    assert curve[1].removed == [(0, 0)] and curve[2].removed == [(0, 2)]
    assert accuracies == pytest.approx([1, 1, 14 / 15, 12 / 15, 9 / 15, 5 / 15, 0])

    calls.clear()
    one_shot = iterative_pruning(scheduled(recomputed, SHAPE, "one_shot"), _toy_evaluate, SHAPE, step=1 / 6)
    assert len(calls) == 1 and torch.equal(calls[0], torch.ones(SHAPE))  # ranked once, with every head open
    # importance measured once ranks both twins as worthless and closes them together, losing 5 at once
    assert [row.removed for row in one_shot[1:3]] == [[(0, 0)], [(0, 1)]]
    one_shot = [row.accuracy for row in one_shot]
    assert one_shot[2] == pytest.approx(10 / 15) and all(r >= o for r, o in zip(accuracies, one_shot))


def test_the_reverse_order_closes_the_heads_of_the_one_shot_order_in_reverse():
    full = _toy_ablation(torch.ones(SHAPE))
    order = one_shot_order(lambda gates: full, SHAPE)
    assert torch.equal(one_shot_order(lambda gates: full, SHAPE, reverse=True), order.flip(0))
    for step in (1 / 6, 0.34):
        curves = {
            schedule: iterative_pruning(
                scheduled(lambda gates: full, SHAPE, schedule), _toy_evaluate, SHAPE, step=step
            )
            for schedule in ("one_shot", "reverse")
        }
        closed = {schedule: [head for row in curve for head in row.removed] for schedule, curve in curves.items()}
        assert closed["reverse"] == closed["one_shot"][::-1]
        assert closed["one_shot"] == [divmod(int(i), SHAPE[1]) for i in order]
    # most important first: the worth-4 head goes first and the accuracy falls at once
    assert curves["reverse"][1].accuracy < curves["one_shot"][1].accuracy
    with pytest.raises(ValueError, match="schedule 'twice' is not one of"):
        scheduled(lambda gates: full, SHAPE, "twice")


def test_rounds_close_a_share_of_the_heads_ties_by_index_and_reject_a_bad_step():
    curve = iterative_pruning(lambda gates: torch.zeros(SHAPE), _toy_evaluate, SHAPE, step=0.34)
    assert [row.heads_removed for row in curve] == [0, 2, 4, 6]  # round(0.34 * 6) = 2 per round
    assert curve[1].removed == [(0, 0), (0, 1)] and curve[-1].share_removed == 1.0
    for step in (0, 1.5):
        with pytest.raises(ValueError, match="step"):
            iterative_pruning(lambda gates: torch.zeros(SHAPE), _toy_evaluate, SHAPE, step=step)


@pytest.fixture(scope="module")
def tiny_bert():
    model, tokenizer = tiny_model("bert", "seq_cls", seed=0)
    data = prepare_data(DataArguments(dataset_name="builtin:sentiment", max_eval_samples=24), tokenizer, "seq_cls")
    batches = [data.collator([data.validation[j] for j in range(i, i + 8)]) for i in range(0, 24, 8)]
    return model, batches


@pytest.fixture(scope="module")
def heldout():
    """Batches of the test split, other examples than the validation batches of ``tiny_bert``."""
    tokenizer = tiny_model("bert", "seq_cls", seed=0)[1]
    data = prepare_data(DataArguments(dataset_name="builtin:sentiment", max_eval_samples=16), tokenizer, "seq_cls")
    return [data.collator([data.test[j] for j in range(i, i + 8)]) for i in range(0, 16, 8)]


@pytest.mark.parametrize("order", ["gradient", "ablation", "random"])
def test_the_curve_of_a_model_starts_at_its_accuracy_and_ends_with_every_head_closed(tiny_bert, heldout, order):
    model, batches = tiny_bert
    curve = prune_curve(model, batches, heldout, order=order, step=0.25, progress=False)
    base = ablation_importance(model, heldout, progress=False)  # the curve is evaluated on the held-out batches
    assert curve[0].heads_removed == 0 and curve[0].accuracy == pytest.approx(base.base_accuracy, abs=0)
    assert curve[0].loss == pytest.approx(base.base_loss, rel=1e-6)
    closed = gated_loss(model, heldout, torch.zeros(HeadGates(model).shape))
    assert curve[-1].heads_removed == 8 and curve[-1].accuracy == pytest.approx(closed[1].mean().item())
    removed = [head for row in curve for head in row.removed]
    assert len(removed) == len(set(removed)) == 8 and [row.heads_removed for row in curve] == [0, 2, 4, 6, 8]


def test_heads_are_ranked_on_the_ranking_batches_and_the_curve_evaluated_on_the_others(tiny_bert, heldout):
    model, batches = tiny_bert
    cost = {name: ablation_importance(model, b, progress=False) for name, b in (("rank", batches), ("eval", heldout))}
    heads = cost["rank"].loss_increase.shape[1]
    cheapest = {name: divmod(int(torch.argmin(c.loss_increase)), heads) for name, c in cost.items()}
    assert cheapest["rank"] != cheapest["eval"]  # the two sets disagree, so the test can tell them apart
    for ranking, evaluation in ((batches, heldout), (heldout, batches)):
        curve = prune_curve(model, ranking, evaluation, order="ablation", step=1 / 8, progress=False)
        name = "rank" if ranking is batches else "eval"
        assert curve[1].removed == [cheapest[name]]
        assert curve[0].loss == pytest.approx(cost["eval" if name == "rank" else "rank"].base_loss, rel=1e-6)


def test_the_one_shot_curve_of_a_model_ranks_once_and_the_reverse_curve_closes_in_reverse(tiny_bert, heldout):
    model, batches = tiny_bert
    cost = ablation_importance(model, batches, progress=False).loss_increase
    curves = {
        schedule: prune_curve(model, batches, heldout, order="ablation", schedule=schedule, step=1 / 8, progress=False)
        for schedule in ("one_shot", "reverse")
    }
    one_shot = [head for row in curves["one_shot"] for head in row.removed]
    assert one_shot == [divmod(int(i), cost.shape[1]) for i in torch.argsort(cost.reshape(-1), stable=True)]
    assert [head for row in curves["reverse"] for head in row.removed] == one_shot[::-1]


def test_mean_ablation_replaces_a_closed_head_by_its_mean_output(tiny_bert):
    model, batches = tiny_bert
    mean = mean_head_outputs(model, batches)
    assert mean.shape == (2, 4, 16) and mean.abs().sum() > 0  # layers, heads, head_dim
    gates = torch.ones(2, 4)
    open_loss = gated_loss(model, batches, gates, baseline=mean)[0]
    assert torch.equal(open_loss, gated_loss(model, batches, gates)[0])  # an open gate ignores the baseline
    gates[1, 2] = 0
    zero = ablation_importance(model, batches, progress=False)
    by_mean = ablation_importance(model, batches, baseline=mean, progress=False)
    # the head's own ablation: its output replaced by the mean, everything else as without the baseline
    torch.testing.assert_close(by_mean.example_loss[1, 2], gated_loss(model, batches, gates, baseline=mean)[0])
    assert not torch.allclose(by_mean.loss_increase, zero.loss_increase)


def test_mean_head_outputs_is_the_mean_over_unpadded_tokens(tiny_bert):
    model, batches = tiny_bert
    layer = model.bert.encoder.layer[1].attention.output.dense
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.eval()
            for batch in batches:
                model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    tokens = torch.cat([x[batch["attention_mask"].bool()] for x, batch in zip(seen, batches)])  # [tokens, hidden]
    assert tokens.shape[0] < sum(b["attention_mask"].numel() for b in batches)  # the batches are padded
    torch.testing.assert_close(mean_head_outputs(model, batches)[1], tokens.mean(0).view(4, 16))


def test_ablation_at_given_gates_ablates_only_the_open_heads(tiny_bert):
    model, batches = tiny_bert
    gates = torch.ones(2, 4)
    gates[0, 1] = gates[1, 3] = 0
    result = ablation_importance(model, batches, gates=gates, progress=False)
    base = gated_loss(model, batches, gates)
    torch.testing.assert_close(result.base_example_loss, base[0])
    for layer, head in ((0, 0), (1, 2)):
        closed = gates.clone()
        closed[layer, head] = 0
        torch.testing.assert_close(result.example_loss[layer, head], gated_loss(model, batches, closed)[0])
    assert result.loss_increase[0, 1] == 0 and result.loss_increase[1, 3] == 0  # already closed: nothing to lose


def test_non_finite_importance_stops_the_curve_with_an_error():
    """NaN sorts after the closed heads' placeholder; ranking only open heads and refusing NaN keeps the loop
    from closing already-closed heads forever."""

    def score(gates):
        return torch.full(SHAPE, float("nan")) if gates.sum() < 6 else torch.zeros(SHAPE)

    with pytest.raises(ValueError, match="not finite after 2 heads were closed"):
        iterative_pruning(score, _toy_evaluate, SHAPE, step=0.34)
