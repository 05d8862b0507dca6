import pytest
import torch

from hf_ext.warp.masking import MaskedUpdate


def _adamw_steps(param, masked: MaskedUpdate | None, steps=5):
    optimizer = torch.optim.AdamW([param], lr=0.1, weight_decay=0.5)
    for step in range(steps):
        param.grad = torch.randn(param.shape, generator=torch.Generator().manual_seed(step))
        if masked:
            masked.zero_frozen_grads_()
        optimizer.step()
        if masked:
            masked.restore_()


@pytest.mark.parametrize("mask_kind", ["element", "input"])
def test_frozen_entries_stay_bit_identical_under_adamw_weight_decay(mask_kind):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(6, 8))
    mask = torch.rand(6, 8) < 0.3 if mask_kind == "element" else torch.tensor([True, False] * 4)
    initial = param.detach().clone()
    masked = MaskedUpdate({"p": param}, {"p": mask})
    _adamw_steps(param, masked)
    frozen = mask if mask_kind == "element" else mask.expand(6, 8)
    assert torch.equal(param.detach()[frozen], initial[frozen])
    assert (param.detach()[~frozen] != initial[~frozen]).all()
    assert masked.unchanged() and masked.max_deviation() == {"p": 0.0}
    assert masked.frozen_counts["p"] == int(frozen.sum())


def test_zeroing_gradients_alone_is_not_a_freeze():
    """The reason restore_() exists: weight decay moves entries whose gradient is zero."""
    param = torch.nn.Parameter(torch.ones(4, 4))
    masked = MaskedUpdate({"p": param}, {"p": torch.ones(4, dtype=torch.bool)})
    optimizer = torch.optim.AdamW([param], lr=0.1, weight_decay=0.5)
    param.grad = torch.ones(4, 4)
    masked.zero_frozen_grads_()
    optimizer.step()
    assert not masked.unchanged() and masked.max_deviation()["p"] > 0
    masked.restore_()
    assert masked.unchanged()


@pytest.mark.parametrize("mask", [torch.ones(3, dtype=torch.bool), torch.ones(8, 6, dtype=torch.bool)])
def test_mask_of_wrong_shape_is_an_error_naming_expected_shapes(mask):
    with pytest.raises(ValueError, match=r"expected \(6, 8\) \(element-wise\) or \(8,\)"):
        MaskedUpdate({"p": torch.zeros(6, 8)}, {"p": mask})


def test_masks_must_cover_exactly_the_parameters():
    with pytest.raises(ValueError, match=r"no mask for \['b'\]; masks for unknown parameters \['c'\]"):
        MaskedUpdate(
            {"a": torch.zeros(2), "b": torch.zeros(2)},
            {"a": torch.ones(2, dtype=torch.bool), "c": torch.ones(2, dtype=torch.bool)},
        )
