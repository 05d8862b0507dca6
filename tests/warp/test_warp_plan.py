"""The WaRP memory plan against the tensors a run allocates: every static item's planned bytes equal the bytes of
the storages the real objects hold (phase-1 statistics, phase-2 reparameterization, importance and AdamW state
after a step, a masked arm's leaf weight and masked update, the plain arm), on the tiny Llama and MiniLM configs."""

import pytest
import torch
from plan_util import optimizer_bytes, storage_bytes

from hf_ext import DataArguments, HfExtTrainingArguments, ModelArguments, WarpArguments
from hf_ext.activations import InputRecorder, compute_bases
from hf_ext.models import classifier_head, load_model, load_tokenizer
from hf_ext.parsing import parse_config
from hf_ext.targets import select_linear
from hf_ext.warp.importance import make_accumulator
from hf_ext.warp.leaf import LeafReparameterization
from hf_ext.warp.masking import MaskedUpdate, build_masks
from hf_ext.warp.plan import warp_plan
from hf_ext.warp.reparam import coefficient_parameters, reparameterize

ARGUMENTS = (ModelArguments, DataArguments, WarpArguments, HfExtTrainingArguments)
CONFIGS = {
    "tiny llama, q/k/v and gate/up sharing inputs, rank 24": (
        "warp_tiny_llama.json",
        ["task_type=seq_cls", 'targets=["self_attn.*", "mlp.*"]', "basis_rank=24", "head=shared"],
    ),
    "MiniLM, the grid's three targets, element importance": (
        "warp_minilm.json",
        ['mask_layouts=["input/per_layer", "element/per_layer"]', "max_seq_length=16"],
    ),
}


def step(model, batch, params):
    """One AdamW step (as the Trainer's default, fused) over ``params``; returns the optimizer."""
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
    model(**batch).loss.backward()
    optimizer.step()
    return optimizer


@pytest.fixture(params=list(CONFIGS), scope="module")
def setup(request):
    from pathlib import Path

    config, overrides = CONFIGS[request.param]
    path = Path(__file__).resolve().parents[2] / "recipes" / "configs" / config
    args = parse_config(ARGUMENTS, [str(path), "output_dir=unused", "report_to=[]", *overrides])
    model_args = args[0]
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    labels = ["safety:a", "safety:b", "utility:a", "utility:b"]
    plan = warp_plan(args, labels=labels, tokenizer=tokenizer, launcher="ddp", num_processes=1)
    batch = tokenizer(["a short sentence", "and another, a little longer one"], padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([0, 3])
    return args, labels, tokenizer, {stage.name: stage for stage in plan.stages}, batch


def fresh_model(setup):
    args, labels, tokenizer, _, _ = setup
    model = load_model(args[0], tokenizer, labels, seed=0)
    model.requires_grad_(False)
    return model, select_linear(model, args[2].targets, layers=args[2].layers)


def bases(targets):
    """Whole bases, as phase 1 saves them (a run keeps ``basis_rank`` of their columns)."""
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.linalg.qr(torch.randn(m.in_features, m.in_features, generator=generator))[0]
        for name, m in targets.items()
    }


def test_phase1_statistics_bases_and_weights(setup):
    _, _, _, stages, batch = setup
    model, targets = fresh_model(setup)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with InputRecorder(targets) as recorder:
        model(**inputs)
    statistics = {id(s): s for s in recorder.statistics.values()}.values()
    held = storage_bytes(t for s in statistics for t in (s.count, s.total, s.gram, s._buffer))
    assert stages["phase 1"].bytes_of("phase-1 statistics") == held
    bases, eigenvalues, _ = compute_bases(model, targets, [inputs], progress=False)
    assert stages["phase 1"].bytes_of("bases U") == storage_bytes([*bases.values(), *eigenvalues.values()])
    assert stages["phase 1"].bytes_of("weights") == storage_bytes(model.parameters())


def test_phase2_reparameterized_training(setup):
    args, _, _, stages, batch = setup
    warp = args[2]
    model, targets = fresh_model(setup)
    modules = reparameterize(model, bases(targets), rank=warp.basis_rank)
    coefficients = coefficient_parameters(modules)
    head = list(classifier_head(model).parameters()) if warp.head == "prototypes" else []
    for p in [*coefficients.values(), *head]:
        p.requires_grad_(True)
    accumulator = make_accumulator(
        modules, kind=warp.importance, granularity=warp.importance_granularity, statistic=warp.importance_statistic
    )
    optimizer = step(model, batch, [*coefficients.values(), *head])
    phase2 = stages["phase 2"]
    parametrizations = [m.parametrizations.weight[0] for m in modules.values()]
    ids = {id(c) for c in coefficients.values()}
    assert phase2.bytes_of("weights") == storage_bytes(p for p in model.parameters() if id(p) not in ids)
    assert phase2.bytes_of("coefficients C") == storage_bytes(coefficients.values())
    assert phase2.bytes_of("bases U") == storage_bytes(p.basis for p in parametrizations)
    assert phase2.bytes_of("basis residual") == storage_bytes(p.residual for p in parametrizations)
    assert phase2.bytes_of("gradients") == storage_bytes(p.grad for p in [*coefficients.values(), *head])
    assert phase2.bytes_of("optimizer state") == optimizer_bytes(optimizer)
    assert phase2.bytes_of("importance") == storage_bytes([*accumulator.sums.values(), *accumulator._pending.values()])


def test_masked_arm_leaf_weight_and_masked_update(setup):
    for layout in setup[0][2].sweep_layouts:
        _check_masked_arm(setup, layout)


def _check_masked_arm(setup, layout):
    args, _, _, _, batch = setup
    warp = args[2]
    model, targets = fresh_model(setup)
    granularity, threshold = layout.split("/")
    generator = torch.Generator().manual_seed(1)
    rank = {name: warp.basis_rank or m.in_features for name, m in targets.items()}
    scores = {
        name: torch.rand(
            (rank[name],) if granularity == "input" else (m.out_features, rank[name]), generator=generator
        )
        for name, m in targets.items()
    }
    masks, _ = build_masks(scores, warp.keep_ratio, threshold)
    leaf = LeafReparameterization(model, bases(targets), rank=warp.basis_rank, masks=masks)
    masked = MaskedUpdate(leaf.coefficients, masks)
    model(**batch).loss.backward()
    weight_grads = storage_bytes(w.grad for w in leaf.weights.values())
    leaf.project_grads_()
    optimizer = torch.optim.AdamW(list(leaf.coefficients.values()), lr=1e-3, fused=True)
    optimizer.step()
    arm = _arm_stage(setup, layout)
    modules = leaf.modules.values()
    assert arm.bytes_of("weights") == storage_bytes(model.parameters()) - storage_bytes(leaf.coefficients.values())
    assert arm.bytes_of("coefficients C") == storage_bytes(leaf.coefficients.values())
    assert arm.bytes_of("bases U") == storage_bytes(t for m in modules for t in (m.basis_columns, m.trainable_columns))
    assert arm.bytes_of("frozen share of W") == storage_bytes(m.fixed_weight for m in modules)
    assert arm.bytes_of("gradients") == weight_grads + storage_bytes(c.grad for c in leaf.coefficients.values())
    assert arm.bytes_of("optimizer state") == optimizer_bytes(optimizer)
    held = storage_bytes(t for e in masked.entries.values() for t in (e.mask, e.columns, e.values))
    assert arm.bytes_of("masks and frozen values") == held, layout


def _arm_stage(setup, layout):
    """The plan of the arm of one layout at ``keep_ratio`` alone (the full plan keeps the largest arm)."""
    import dataclasses

    args, labels, tokenizer, _, _ = setup
    warp = dataclasses.replace(args[2], mask_layouts=[layout], keep_ratios=[args[2].keep_ratio])
    plan = warp_plan((*args[:2], warp, args[3]), labels=labels, tokenizer=tokenizer, launcher="ddp", num_processes=1)
    return next(stage for stage in plan.stages if stage.name == "phase 3")


def test_plain_arm(setup):
    _, _, _, stages, batch = setup
    model, targets = fresh_model(setup)
    weights = [m.weight for m in targets.values()]
    for w in weights:
        w.requires_grad_(True)
    optimizer = step(model, batch, weights)
    assert stages["plain"].bytes_of("weights") == storage_bytes(model.parameters())
    assert stages["plain"].bytes_of("gradients") == storage_bytes(w.grad for w in weights)
    assert stages["plain"].bytes_of("optimizer state") == optimizer_bytes(optimizer)
