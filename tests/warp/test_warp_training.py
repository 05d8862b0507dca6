"""WaRP pieces inside HfExtTrainer: importance read before clipping, exact freezing through AdamW,
gradient accumulation and a resumed checkpoint."""

import pytest
import torch
from transformers import TrainingArguments

from hf_ext.config import DataArguments
from hf_ext.data import prepare_data
from hf_ext.errors import ConfigError
from hf_ext.io import load_tensors
from hf_ext.models import tiny_model
from hf_ext.trainer import GradientCallback, HfExtTrainer
from hf_ext.warp.callbacks import CoefficientDriftCallback, ImportanceCallback, MaskedUpdateCallback
from hf_ext.warp.importance import ImportanceAccumulator
from hf_ext.warp.masking import MaskedUpdate
from hf_ext.warp.reparam import coefficient_parameters, reparameterize

TARGETS = ["bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense"]


def _reparameterized_model(seed=0):
    model, tokenizer = tiny_model(
        "bert", "seq_cls", seed=seed, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    bases = {}
    for i, name in enumerate(TARGETS):
        d_in = model.get_submodule(name).in_features
        bases[name] = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(i)))[0]
    modules = reparameterize(model, bases)
    for p in model.parameters():
        p.requires_grad_(False)
    params = coefficient_parameters(modules)
    for p in [*params.values(), *model.classifier.parameters()]:
        p.requires_grad_(True)
    return model, tokenizer, params


def _data(tokenizer, n):
    return prepare_data(
        DataArguments(dataset_name="builtin:sentiment", max_train_samples=n, max_eval_samples=8), tokenizer, "seq_cls"
    )


def _args(tmp_path, **overrides):
    fields = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        seed=3,
        save_strategy="no",
        dataloader_drop_last=True,
    )
    return TrainingArguments(**(fields | overrides))


def test_importance_is_read_before_clipping_and_equals_hand_computation(tmp_path):
    """lr 0 keeps the model fixed; 8 examples = one optimizer step per epoch of 2 accumulated batches,
    so every step's gradient is that of the mean loss over all 8 examples, whatever the order."""
    model, tokenizer, params = _reparameterized_model()
    data = _data(tokenizer, 8)
    batch = data.collator([data.train[i] for i in range(8)])
    model.zero_grad()
    model(**batch).loss.backward()
    expected = {name: p.grad.abs().clone() for name, p in params.items()}
    model.zero_grad()

    accumulator = ImportanceAccumulator(params, statistic="step")
    args = _args(tmp_path, max_steps=3, learning_rate=0.0, max_grad_norm=1e-4, optim="sgd")
    HfExtTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        data_collator=data.collator,
        callbacks=[ImportanceCallback(accumulator)],
    ).train()
    assert accumulator.steps == 3
    for name, importance in accumulator.mean().items():
        torch.testing.assert_close(importance, expected[name], atol=1e-6, rtol=1e-4)
        assert importance.sum() > 1e-3  # far above what clipping to 1e-4 would leave


def _single_example_gradients(model, params, data, count):
    singles = []
    for i in range(count):
        model.zero_grad()
        model(**data.collator([data.train[i]])).loss.backward()
        singles.append({name: p.grad.clone() for name, p in params.items()})
    model.zero_grad()
    return singles


def test_micro_batch_importance_is_the_mean_of_each_micro_batch_gradient_under_accumulation(tmp_path):
    """The default statistic: 4 examples, batch 1 x 2 accumulation steps, 2 steps at lr 0: importance is the
    mean over the 4 examples of |dL_i/dC| (whatever their order), not |mean over a step| as with 'step'."""
    model, tokenizer, params = _reparameterized_model()
    data = _data(tokenizer, 4)
    singles = _single_example_gradients(model, params, data, 4)
    accumulator = ImportanceAccumulator(params)  # statistic="micro_batch"
    args = _args(tmp_path, max_steps=2, per_device_train_batch_size=1, learning_rate=0.0, optim="sgd")
    trainer = HfExtTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)
    trainer.add_callback(ImportanceCallback(accumulator))
    trainer.train()
    assert (accumulator.steps, accumulator.micro_batches) == (2, 4)
    for name, importance in accumulator.mean().items():
        expected = sum(g[name].abs() for g in singles) / 4
        torch.testing.assert_close(importance, expected, atol=1e-6, rtol=1e-4)
        cancelled = (singles[0][name] + singles[1][name]).abs() / 2  # what averaging first would give for a pair
        assert not torch.allclose(expected, cancelled)


def _masked_trainer(tmp_path, model, tokenizer, callbacks, *, max_steps=6, save_steps=None, **overrides):
    """AdamW with a large weight decay over 48 examples in batches of 4 x 2 accumulation steps."""
    args = _args(
        tmp_path,
        max_steps=max_steps,
        learning_rate=5e-2,
        weight_decay=0.1,
        optim="adamw_torch",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        **({"report_to": ["tensorboard"]} | overrides),
    )
    data = _data(tokenizer, 48)
    return HfExtTrainer(
        model=model, args=args, train_dataset=data.train, data_collator=data.collator, callbacks=callbacks
    )


def _masked_run(tmp_path, masks, *, max_steps=6, resume=None, save_steps=None, bf16=False):
    model, tokenizer, params = _reparameterized_model()
    initial = {name: p.detach().clone() for name, p in params.items()}
    masked = MaskedUpdate(params, masks)
    callbacks = [MaskedUpdateCallback(masked), CoefficientDriftCallback(params, masks)]
    trainer = _masked_trainer(
        tmp_path, model, tokenizer, callbacks, max_steps=max_steps, save_steps=save_steps, bf16=bf16
    )
    trainer.train(resume_from_checkpoint=resume)
    return params, initial, masked, trainer


def _masks():
    generator = torch.Generator().manual_seed(5)
    return {
        TARGETS[0]: torch.rand(64, generator=generator) < 0.25,  # per input direction
        TARGETS[1]: torch.rand(64, 128, generator=generator) < 0.25,
    }  # per element


def _frozen(mask, shape):
    return mask.expand(shape)


def test_frozen_coefficients_bit_identical_with_adamw_accumulation_and_resume(tmp_path):
    masks = _masks()
    params, initial, masked, trainer = _masked_run(tmp_path / "full", masks, save_steps=3)
    for name, p in params.items():
        frozen = _frozen(masks[name], p.shape)
        assert torch.equal(p.detach()[frozen], initial[name][frozen]), name
        assert (p.detach()[~frozen] != initial[name][~frozen]).float().mean() > 0.9, name
    drift = [entry for entry in trainer.state.log_history if f"drift/{TARGETS[1]}/frozen" in entry]
    assert len(drift) == 6 and all(e[f"drift/{TARGETS[1]}/frozen"] == 0.0 for e in drift)
    assert drift[-1][f"drift/{TARGETS[1]}/trainable"] > 0

    checkpoint = tmp_path / "full" / "checkpoint-3"
    resumed, resumed_initial, _, _ = _masked_run(tmp_path / "full", masks, resume=str(checkpoint))
    for name, p in resumed.items():
        frozen = _frozen(masks[name], p.shape)
        assert torch.equal(p.detach()[frozen], resumed_initial[name][frozen]), name
        torch.testing.assert_close(p.detach(), params[name].detach(), atol=1e-6, rtol=1e-5)


def test_resume_from_a_checkpoint_of_other_weights_is_refused(tmp_path):
    masks = _masks()
    _masked_run(tmp_path, masks, max_steps=3, save_steps=3)
    model, tokenizer, params = _reparameterized_model(seed=1)  # masks snapshot weights the checkpoint does not hold
    masked = MaskedUpdate(params, masks)
    data = _data(tokenizer, 48)
    trainer = HfExtTrainer(
        model=model,
        args=_args(tmp_path, max_steps=6, save_strategy="no"),
        train_dataset=data.train,
        data_collator=data.collator,
        callbacks=[MaskedUpdateCallback(masked)],
    )
    with pytest.raises(RuntimeError, match="frozen entries differ from their snapshot"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_callbacks_refuse_a_plain_trainer(tmp_path):
    from transformers import Trainer

    model, tokenizer, params = _reparameterized_model()
    data = _data(tokenizer, 8)
    callback = ImportanceCallback(ImportanceAccumulator(params))
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=1),
        train_dataset=data.train,
        data_collator=data.collator,
        callbacks=[callback],
    )
    with pytest.raises(TypeError, match="needs hf_ext.HfExtTrainer"):
        callback.bind(trainer)


class _PoisonGradients(GradientCallback):
    """Sets one gradient entry to inf at the given optimizer steps, before the importance callback reads it."""

    def __init__(self, param, steps):
        self.param, self.steps, self.seen = param, set(steps), 0

    def on_gradients_ready(self, args, state, control, **kwargs):
        self.seen += 1
        if self.seen in self.steps:
            self.param.grad.view(-1)[0] = float("inf")


def test_non_finite_gradient_steps_are_skipped_and_counted(tmp_path):
    model, tokenizer, params = _reparameterized_model()
    data = _data(tokenizer, 8)
    accumulator = ImportanceAccumulator(params, statistic="step")
    poison = _PoisonGradients(next(iter(params.values())), steps=[3])  # last: SGD would turn inf into nan weights
    args = _args(tmp_path, max_steps=3, learning_rate=0.0, optim="sgd", max_grad_norm=0.0)
    trainer = HfExtTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)
    trainer.add_callback(poison)
    trainer.add_callback(ImportanceCallback(accumulator))
    with pytest.warns(UserWarning, match="non-finite gradient"):
        trainer.train()
    assert (accumulator.steps, accumulator.skipped_steps) == (2, 1)
    assert all(torch.isfinite(v).all() for v in accumulator.mean().values())


def test_frozen_coefficients_bit_identical_under_bf16_autocast(tmp_path):
    masks = _masks()
    params, initial, masked, _ = _masked_run(tmp_path, masks, max_steps=3, bf16=True)
    assert masked.unchanged()
    for name, p in params.items():
        frozen = _frozen(masks[name], p.shape)
        assert p.dtype == torch.float32 and torch.equal(p.detach()[frozen], initial[name][frozen])


@pytest.mark.parametrize(
    "env, name",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "DeepSpeed ZeRO-2"),
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
    ],
)
def test_gradient_callbacks_refuse_deepspeed_and_fsdp_when_bound(tmp_path, monkeypatch, env, name):
    model, tokenizer, params = _reparameterized_model()
    data = _data(tokenizer, 8)
    trainer = HfExtTrainer(
        model=model, args=_args(tmp_path, max_steps=1), train_dataset=data.train, data_collator=data.collator
    )
    for key, value in env.items():  # what `accelerate launch` sets for a DeepSpeed or FSDP config
        monkeypatch.setenv(key, value)
    masks = {n: torch.zeros(p.shape[1], dtype=torch.bool) for n, p in params.items()}
    for callback in (
        MaskedUpdateCallback(MaskedUpdate(params, masks)),
        ImportanceCallback(ImportanceAccumulator(params)),
    ):
        with pytest.raises(
            ConfigError, match=f"{type(callback).__name__} cannot run under {name}: it reads whole gradients"
        ):
            trainer.add_callback(callback)


def test_only_gradient_callbacks_get_the_gradients_ready_event(tmp_path):
    """A plain TrainerCallback that happens to define on_gradients_ready is not called; a GradientCallback is."""
    from transformers import TrainerCallback

    class Plain(TrainerCallback):
        calls = 0

        def on_gradients_ready(self, *args, **kwargs):
            Plain.calls += 1

    class Reader(GradientCallback):
        calls = 0

        def on_gradients_ready(self, *args, **kwargs):
            Reader.calls += 1

    model, tokenizer, _ = _reparameterized_model()
    data = _data(tokenizer, 16)
    trainer = HfExtTrainer(
        model=model,
        args=_args(tmp_path, max_steps=2),
        train_dataset=data.train,
        data_collator=data.collator,
        callbacks=[Plain(), Reader()],
    )
    trainer.train()
    assert (Plain.calls, Reader.calls) == (0, 2)


@pytest.mark.multiprocess
def test_micro_batch_importance_under_ddp_is_the_mean_over_every_ranks_micro_batches(tmp_path):
    """Plain DDP loop (no Trainer): the hooks read each rank's own gradient, the mean sums across ranks."""
    from launch_util import torchrun

    torchrun("warp_importance_ddp.py", str(tmp_path / "importance.safetensors"), ",".join(TARGETS))
    got, _ = load_tensors(tmp_path / "importance.safetensors")
    model, tokenizer, params = _reparameterized_model()
    singles = _single_example_gradients(model, params, _data(tokenizer, 4), 4)
    for name in params:
        torch.testing.assert_close(got[name], sum(g[name].abs() for g in singles) / 4, atol=1e-6, rtol=1e-4)
