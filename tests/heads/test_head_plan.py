"""The head-plasticity memory plan against the tensors the study allocates, on the MiniLM config: the weights, the
task-head copies, the gates and gradient of a real gradient/Fisher pass, the attention probabilities of a real
entropy pass, the gradients and AdamW state of a fine-tune step, the host copy of the initial weights; the
activations of the importance pass against the tensors autograd saves; and the launcher it refuses."""

from pathlib import Path

import pytest
import torch
from plan_util import optimizer_bytes, storage_bytes
from recipes_util import run_recipe
from torch.overrides import TorchFunctionMode

import hf_ext
from hf_ext.errors import ConfigError
from hf_ext.heads.entropy import attention_entropy
from hf_ext.heads.gates import HeadGates, mean_head_outputs
from hf_ext.heads.importance import gradient_importance
from hf_ext.heads.plan import ARGUMENT_TYPES, plan
from hf_ext.models import load_model, load_tokenizer
from hf_ext.parsing import parse_config
from hf_ext.plan import label_names
from hf_ext.probe import head_state

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "recipes" / "configs" / "head_plasticity_minilm_rotten_tomatoes.json"
# small passes (seconds on a CPU); the batch is padded to max_seq_length, the length the plan counts
QUICK = ["report_to=[]", "per_device_eval_batch_size=6", "per_device_train_batch_size=4", "max_seq_length=24"]


def arguments(tmp_path, *overrides):
    return parse_config(ARGUMENT_TYPES, [str(CONFIG), f"output_dir={tmp_path}", *QUICK, *overrides])


def stages_of(args, **launcher) -> dict:
    launcher = {"launcher": "ddp", "num_processes": 1} | launcher
    return {stage.name: stage for stage in plan(args, **launcher).stages}


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The config's arguments (mean ablation: every gate item planned), its plan, and the MiniLM it loads."""
    args = arguments(tmp_path_factory.mktemp("run"), "ablation=mean")
    model_args, data_args, _, training_args = args
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    model = load_model(model_args, tokenizer, label_names(data_args, "seq_cls"), seed=0)
    size, length = training_args.per_device_eval_batch_size, data_args.max_seq_length
    texts = [f"a film {'that goes on and on ' * i}about nothing" for i in range(size)]
    batch = dict(tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"))
    batch["labels"] = torch.arange(size) % 2
    return args, stages_of(args), model, batch


class Recorder(TorchFunctionMode):
    """Every ``Tensor.repeat`` with its result (gradient_importance's per-example gates repeat its gates) and every
    gradient ``torch.autograd.grad`` returns."""

    def __init__(self):
        super().__init__()
        self.repeats, self.gradients = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.Tensor.repeat:
            self.repeats.append((args[0], result))
        if func is torch.autograd.grad:
            self.gradients.extend(result)
        return result


def test_the_minilm_config_peaks_in_the_gradient_passes_after_training(tmp_path):
    """As shipped (evaluation batches of 100, training batches of 32) the importance passes outweigh training."""
    args = parse_config(ARGUMENT_TYPES, [str(CONFIG), f"output_dir={tmp_path}", "report_to=[]"])
    result = plan(args, launcher="ddp", num_processes=1, gpu_memory=0.5)
    assert [s.name for s in result.stages] == [
        "importance (before)",
        "attention entropy (before)",
        "training",
        "importance (after)",
    ]
    text = result.format()
    assert text.startswith("memory plan: head plasticity, embedded:minilm; 1 process(es), ddp; MiB per rank")
    assert "(importance (after)): does not fit in 0.5 GiB" in text
    assert "to fit, change: a smaller per_device_eval_batch_size (the importance (after) pass)" in text
    assert "initial weights (rank 0, host copy)" not in text  # a GPU run's copy is host memory: a note
    assert "host memory, not in these totals: rank 0 keeps a CPU copy of the initial weights (86.647 MiB)" in text


def test_importance_pass_weights_head_copies_gates_and_baseline_equal_the_allocated_bytes(minilm, monkeypatch):
    _, stages, model, batch = minilm
    baselines, original_init = [], HeadGates.__init__

    def recording_init(self, model, gates=None, baseline=None):
        baselines.append(baseline)
        original_init(self, model, gates, baseline)

    monkeypatch.setattr(HeadGates, "__init__", recording_init)
    baseline = mean_head_outputs(model, [batch])
    with Recorder() as recorder:
        gradient_importance(model, [batch], baseline=baseline, progress=False)
    monkeypatch.undo()
    layers, heads = HeadGates(model).shape
    gates = [t for call in recorder.repeats if tuple(call[0].shape) == (layers, heads) for t in call]
    gradients = recorder.gradients
    assert len(gates) == 2 and len(gradients) == 1 and baselines[-1] is baseline

    copies = [*head_state(model).values(), *head_state(model).values()]  # the random and the probed head
    for name in ("importance (before)", "importance (after)"):
        stage = stages[name]
        assert stage.bytes_of("weights") == storage_bytes(model.parameters())
        assert stage.bytes_of("task-head copies") == storage_bytes(copies)
        assert stage.bytes_of("head gates") == storage_bytes([*gates, *gradients])
        assert stage.bytes_of("mean-ablation baseline") == storage_bytes([baseline])


def test_importance_pass_activations_equal_what_autograd_saves(minilm):
    """On a full-length batch (no padding, as the plan counts) the pass saves exactly what the plan counted on the
    meta device (parameters left out): no linear inputs for frozen weights, no dropout masks in eval mode."""
    args, stages, model, _ = minilm
    tokenizer = load_tokenizer(args[0].model_name_or_path)
    size, length = args[-1].per_device_eval_batch_size, args[1].max_seq_length
    full = dict(
        tokenizer(["a film that goes on and on " * 20] * size, max_length=length, truncation=True, return_tensors="pt")
    )
    full["labels"] = torch.arange(size) % 2
    assert bool(full["attention_mask"].all())
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        gradient_importance(model, [full], progress=False)
    assert sum(saved.values()) == stages["importance (before)"].bytes_of("activations")


def test_entropy_pass_attention_probabilities_equal_the_allocated_bytes(minilm):
    _, stages, model, batch = minilm
    returned = []
    handle = model.register_forward_hook(lambda module, args, output: returned.extend(output.attentions))
    try:
        attention_entropy(model, [batch], progress=False)
    finally:
        handle.remove()
    stage = stages["attention entropy (before)"]
    assert stage.bytes_of("attention probabilities") == storage_bytes(returned)
    assert stage.bytes_of("weights") == storage_bytes(model.parameters())


def test_training_gradients_and_adamw_state_equal_the_allocated_bytes(minilm):
    _, stages, model, batch = minilm
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    training = stages["training"]
    assert training.bytes_of("weights") == storage_bytes(model.parameters())
    assert training.bytes_of("gradients") == storage_bytes(p.grad for p in model.parameters())
    assert training.bytes_of("optimizer state") == optimizer_bytes(optimizer)
    assert stages["importance (after)"].bytes_of("optimizer state") == optimizer_bytes(
        optimizer
    )  # the Trainer still holds it
    model.zero_grad(set_to_none=True)


def test_use_cpu_adds_the_initial_weights_copy_of_the_state_dict(minilm, tmp_path):
    _, _, model, _ = minilm
    result = plan(arguments(tmp_path, "use_cpu=true"), launcher="ddp", num_processes=1)
    stages = {stage.name: stage for stage in result.stages}
    assert not any("host memory" in note for note in result.notes)  # counted in the stages instead
    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}  # as run_seed copies it
    for name in ("training", "importance (after)"):
        assert stages[name].bytes_of("initial weights (rank 0, host copy)") == storage_bytes(initial.values())
    assert stages["importance (before)"].bytes_of("initial weights (rank 0, host copy)") == 0  # not copied yet


def test_without_gradient_passes_after_training_there_is_no_importance_after_stage(tmp_path):
    args = arguments(tmp_path, "log_head_importance_steps=0", "prune_order=ablation")
    assert "importance (after)" not in stages_of(args)


def test_fsdp2_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as refused:
        plan(arguments(tmp_path), launcher="fsdp2", num_processes=2)
    message = str(refused.value)
    assert message.startswith("the head study cannot run under FSDP: it reads whole weights") and "\n" not in message


def test_the_recipe_prints_its_plan_before_running(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(hf_ext, "run_head_study", lambda *args: ran.append(args) or [])
    run_recipe("head_plasticity", CONFIG.name, f"output_dir={tmp_path}", *QUICK)
    out = capsys.readouterr().out
    assert out.startswith("memory plan: head plasticity, embedded:minilm; 1 process(es), ddp") and len(ran) == 1
    assert "hf-ext plan CONFIG prints this" in out
