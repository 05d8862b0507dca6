"""The preservation study's memory plan against what the study allocates (its own initialisations on the MiniLM
preservation config, a few calibration texts), the host items by use_cpu, and its line for a refused launcher."""

from pathlib import Path
from types import SimpleNamespace

import peft.tuners.lora.corda as corda
import pytest
import torch
from plan_util import optimizer_bytes, storage_bytes

import hf_ext.activations as activations
from hf_ext.errors import ConfigError
from hf_ext.lora_null.preservation import _initialised, sentence_embeddings
from hf_ext.lora_null.preservation_plan import ARGUMENT_TYPES, HOST, plan
from hf_ext.models import load_model, load_tokenizer
from hf_ext.parsing import parse_config
from hf_ext.texts import text_batches

CONFIG = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "lora_null_preservation_minilm.json"
TEXTS = [
    "a short sentence",
    "and another, a little longer one",
    "a third text to calibrate on",
    "four words in it",
    "five",
]


def parsed(*overrides: str):
    return parse_config(
        ARGUMENT_TYPES,
        [str(CONFIG), "output_dir=unused", "report_to=[]", "preservation_samples=5", "probe_samples=4", "knn_k=2"]
        + list(overrides),
    )


def state(model: torch.nn.Module) -> int:
    return storage_bytes([*model.parameters(), *model.buffers()])


@pytest.fixture
def one_thread():
    """Small eigendecompositions and inversions: a second thread gains nothing, and on a loaded machine its
    synchronisation makes them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_planned_static_bytes_equal_the_allocated_ones(monkeypatch, one_thread):
    # the config's targets but the FFN output projection, whose d_in of 1536 makes the real eigendecompositions and
    # CorDA's inversions take ~10 s; query/value still share an input and intermediate.dense has d_in < d_out
    targets = '["query","value","intermediate.dense","attention.output.dense"]'
    args = parsed("use_cpu=true", f"lora_target_modules={targets}")
    model_args, data_args, lora_args, study, training_args = args
    stages = {stage.name: stage for stage in plan(args, launcher="ddp", num_processes=1).stages}
    assert list(stages) == ["calibration", "CorDA calib", "training"]
    calibration, corda_calib, training = stages.values()
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    data = SimpleNamespace(labels=["fresh", "rotten"])  # corpus:rotten_tomatoes' classes
    batches = text_batches(tokenizer, TEXTS, batch_size=8, max_length=data_args.max_seq_length)

    def initialised(method):
        return _initialised(method, model_args, lora_args, tokenizer, data, batches, training_args.seed)

    base = load_model(model_args, tokenizer, data.labels)  # prepare_run's
    assert all(s.bytes_of(f"base model{HOST}") == state(base) for s in stages.values())
    measured = [text_batches(tokenizer, TEXTS[:n], batch_size=64, max_length=64) for n in (5, 4)]  # as parsed()
    embeddings = [sentence_embeddings(base, b) for b in measured]
    assert training.bytes_of(f"base embeddings{HOST}") == storage_bytes(embeddings)

    statistics = []  # LoRA-Null's calibration: every target's statistics at once, on the host
    collect = activations.collect_input_statistics

    def kept_statistics(*args, **kwargs):
        result = collect(*args, **kwargs)
        statistics.append(dict(result))  # a copy: iter_bases releases each entry of the one it is given
        return result

    monkeypatch.setattr(activations, "collect_input_statistics", kept_statistics)
    null = initialised("null_frozen_A")
    distinct = {id(s): s for s in statistics[0].values()}.values()
    held = storage_bytes(t for s in distinct for t in (s.count, s.total, s.gram, s._buffer))
    assert calibration.bytes_of(f"calibration statistics{HOST}") == held
    assert calibration.bytes_of(f"weights{HOST}") == storage_bytes(null.parameters())
    assert next(null.parameters()).device.type == "cpu"  # nothing moves the cached models to the accelerator
    # the cache when the last LoRA-Null mode (null_projection) is built: null_frozen_A's model; at its fullest (in
    # training): null_frozen_A, null_projection, corda_kpm and head_only
    assert calibration.bytes_of(f"cached initialised models{HOST}") == state(null)
    assert training.bytes_of(f"cached initialised models{HOST}") == 4 * state(null)

    held = {}  # CorDA: peft's covariances and full SVDs of every target at once, before it crops them to rank r
    crop = corda.crop_corda_eigens

    def measured_crop(model, config):
        modules = [m for _, m in corda.target_modules(model, config)]
        held["covariances"] = storage_bytes(m.covariance_matrix for m in modules)
        held["eigens"] = storage_bytes(t for m in modules for t in (m.eigens.U_WC, m.eigens.S_WC, m.eigens.V_WC))
        held["weights"] = storage_bytes(model.parameters())
        return crop(model, config)

    monkeypatch.setattr(corda, "crop_corda_eigens", measured_crop)
    corda_model = initialised("corda_kpm")
    assert corda_calib.bytes_of(f"CorDA covariances{HOST}") == held["covariances"]
    assert corda_calib.bytes_of(f"CorDA eigens{HOST}") == held["eigens"]
    assert corda_calib.bytes_of(f"weights{HOST}") == held["weights"]
    assert corda_calib.bytes_of(f"cached initialised models{HOST}") == 2 * state(corda_model) == 2 * state(null)

    model = initialised("lora")  # the largest training: lora_A and lora_B train, and the head's copy
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
    batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    assert training.bytes_of("weights") == storage_bytes(model.parameters())
    assert training.bytes_of("gradients") == storage_bytes(p.grad for p in trainable)
    assert training.bytes_of("optimizer state") == optimizer_bytes(optimizer)
    assert training.bytes_of("verification bases") == 0  # the study verifies nothing


def test_use_cpu_adds_the_host_items_and_a_gpu_plan_counts_the_gpu():
    host = plan(parsed("use_cpu=true"), launcher="ddp", num_processes=2)
    gpu = plan(parsed("use_cpu=false"), launcher="ddp", num_processes=2)
    assert [s.name for s in gpu.stages] == ["training"]
    assert not [i for s in gpu.stages for i in s.items if i.name.endswith(HOST)]
    (training,) = [s for s in host.stages if s.name == "training"]
    host_items = [i for i in training.items if i.name.endswith(HOST)]
    assert {i.name for i in host_items} == {
        f"{n}{HOST}" for n in ("base model", "cached initialised models", "base embeddings")
    }
    assert training.total == gpu.stages[0].total + sum(i.bytes for i in host_items)
    assert gpu.stages[0].bytes_of("DDP gradient buckets") == gpu.stages[0].bytes_of("gradients") > 0
    assert "host memory per rank, not in these totals" in gpu.format()
    # fewer methods: no calibration without a LoRA-Null mode, nothing cached with lora alone
    alone = plan(parsed("use_cpu=true", 'methods=["lora"]'), launcher="ddp", num_processes=1)
    assert [s.name for s in alone.stages] == ["training"]
    assert alone.stages[0].bytes_of(f"cached initialised models{HOST}") == 0


def test_a_launcher_the_study_refuses_is_one_line():
    with pytest.raises(ConfigError, match="cannot run under FSDP") as caught:
        plan(parsed("use_cpu=true"), launcher="fsdp2", num_processes=2)
    assert "\n" not in str(caught.value)
