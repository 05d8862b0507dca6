"""Phase 3 with a leaf weight (W formed once per optimizer step) against the parametrized path."""

import pytest
import torch
from test_warp_training import TARGETS, _masked_run, _masked_trainer, _masks
from transformers import AutoModelForSequenceClassification

from hf_ext.models import tiny_model
from hf_ext.warp.callbacks import LeafWeightCallback
from hf_ext.warp.leaf import LeafReparameterization
from hf_ext.warp.masking import MaskedUpdate
from hf_ext.warp.reparam import DDP_IGNORE, reparameterize


def _bases(model):
    bases = {}
    for i, name in enumerate(TARGETS):
        d_in = model.get_submodule(name).in_features
        bases[name] = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(i)))[0]
    return bases


def _model():
    return tiny_model("bert", "seq_cls", seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _leaf_run(tmp_path, masks, *, max_steps=6, **overrides):
    model, tokenizer = _model()
    leaf = LeafReparameterization(model, _bases(model), masks=masks)
    params = leaf.coefficients
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*params.values(), *leaf.weights.values(), *model.classifier.parameters()]:
        p.requires_grad_(True)
    initial = {name: p.detach().clone() for name, p in params.items()}
    callbacks = [LeafWeightCallback(leaf, MaskedUpdate(params, masks))]
    trainer = _masked_trainer(tmp_path, model, tokenizer, callbacks, max_steps=max_steps, report_to=[], **overrides)
    trainer.train()
    return model, leaf, params, initial


def test_leaf_weight_gives_the_parametrized_coefficients_and_keeps_frozen_ones_bit_identical(tmp_path):
    """6 AdamW steps (weight decay, clipping, 2 accumulation steps) with an input-direction mask and an element
    mask: the coefficients agree with the parametrized path to float32 rounding, frozen ones bit for bit."""
    masks = _masks()
    reference, _, _, _ = _masked_run(tmp_path / "parametrized", masks)
    model, leaf, params, initial = _leaf_run(tmp_path / "leaf", masks)
    for name, p in params.items():
        frozen = masks[name].expand(p.shape)
        assert torch.equal(p.detach()[frozen], initial[name][frozen]), name
        assert (p.detach()[~frozen] != initial[name][~frozen]).float().mean() > 0.9, name
        torch.testing.assert_close(p.detach(), reference[name].detach(), atol=2e-5, rtol=1e-4)
        u = leaf.modules[name].basis_columns  # the trainable columns' basis
        assert u.shape[1] == int((~masks[name].expand(p.shape).all(0)).sum())
    weight = model.get_submodule(TARGETS[0]).weight.detach().clone()
    expected = params[TARGETS[0]].detach() @ _bases(model)[TARGETS[0]].T
    torch.testing.assert_close(weight, expected, atol=1e-5, rtol=1e-5)


def test_merged_leaf_model_is_a_plain_model(tmp_path):
    model, leaf, params, _ = _leaf_run(tmp_path / "run", _masks(), max_steps=2)
    merged_c = {name: p.detach().clone() for name, p in params.items()}
    assert all(f"{name}.coefficients" in getattr(model, DDP_IGNORE) for name in TARGETS)
    leaf.merge()
    assert not any("coefficients" in key or "basis" in key for key in model.state_dict())
    assert not any("coefficients" in name for name in getattr(model, DDP_IGNORE, ()))
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    bases = _bases(model)
    for name in TARGETS:
        torch.testing.assert_close(
            loaded.get_submodule(name).weight, merged_c[name] @ bases[name].T, atol=1e-5, rtol=1e-5
        )


def test_leaf_refuses_a_module_twice_and_masks_of_unknown_modules():
    model, _ = _model()
    bases = _bases(model)
    LeafReparameterization(model, bases)
    with pytest.raises(ValueError, match="already trains through a leaf weight"):
        LeafReparameterization(model, bases)
    other, _ = _model()
    with pytest.raises(ValueError, match="masks for modules without a basis"):
        LeafReparameterization(other, {TARGETS[0]: bases[TARGETS[0]]}, masks={TARGETS[1]: torch.zeros(128)})
    with pytest.raises(ValueError, match="mask for .* has shape"):
        LeafReparameterization(other, bases, masks={TARGETS[0]: torch.zeros(3, dtype=torch.bool)})
    parametrized, _ = _model()
    reparameterize(parametrized, {TARGETS[0]: bases[TARGETS[0]]})
    with pytest.raises(ValueError, match="already reparameterized"):
        LeafReparameterization(parametrized, {TARGETS[0]: bases[TARGETS[0]]})


def test_truncated_basis_keeps_the_residual_constant():
    model, _ = _model()
    name = TARGETS[0]
    before = model.get_submodule(name).weight.detach().clone()
    leaf = LeafReparameterization(model, {name: _bases(model)[name]}, rank=16)
    torch.testing.assert_close(model.get_submodule(name).weight.detach(), before, atol=1e-6, rtol=1e-6)
    assert leaf.coefficients[name].shape == (before.shape[0], 16)
