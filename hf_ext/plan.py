"""Memory plan of a run before it starts: the bytes one rank holds in each phase or arm, from the model built on
the meta device (no weights read), the launcher and the number of processes.

A plan is a list of :class:`Stage` (a phase or an arm), each a list of :class:`Item` (weights, trainable
parameters, gradients, optimizer state, and what a technique adds: bases, statistics, importance, frozen
values). Every item but the activation estimate is *static*: its bytes are the ``nbytes`` of tensors the run
allocates, computed from shapes and dtypes, and the tests check them against the allocated tensors. The
activations of a training step are what autograd saves, counted by running the forward on the meta device (exact
for the saved tensors; the backward's transients are not counted); with gradient checkpointing, and for
forwards without gradients, they are an order of magnitude (Korthikanti et al. 2022's per-layer count).

Per rank, by launcher: ``ddp`` holds everything whole; ``fsdp2`` shards every parameter, its gradient and its
optimizer state along dim 0 (the largest shard, rank 0's, is counted); ``zero2`` shards gradients and optimizer
state, weights whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import ConfigError, HfExtError

LAUNCHERS = ("ddp", "fsdp2", "zero2")
_LAUNCHER_NAMES = {"fsdp2": "FSDP", "zero2": "DeepSpeed ZeRO-2"}  # as distributed.sharded_launcher names them
GIB = 2**30

# Architectures of the models the shipped example configs name, for planning without the hub; a model found
# locally (a directory, or the Hugging Face cache) is read from its own config.json instead.
KNOWN_CONFIGS = {
    "meta-llama/Llama-3.1-8B-Instruct": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    },
    "meta-llama/Llama-2-7b-hf": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "dtype": "float16",
    },
    "Qwen/Qwen1.5-4B": {
        "model_type": "qwen2",
        "hidden_size": 2560,
        "intermediate_size": 6912,
        "num_hidden_layers": 40,
        "num_attention_heads": 20,
        "num_key_value_heads": 20,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    },
}


@dataclass(frozen=True)
class Item:
    """One kind of memory a stage holds on one rank."""

    name: str
    bytes: int
    static: bool = True  # False: an estimate (activations)


@dataclass
class Stage:
    """A phase or an arm of a run, and what one rank holds during it."""

    name: str
    items: list[Item] = field(default_factory=list)

    def add(self, name: str, size: int, *, static: bool = True) -> None:
        if size:
            self.items.append(Item(name, int(size), static))

    @property
    def total(self) -> int:
        return sum(item.bytes for item in self.items)

    def bytes_of(self, name: str) -> int:
        return sum(item.bytes for item in self.items if item.name == name)


@dataclass
class Plan:
    """The stages of a run on ``num_processes`` ranks under ``launcher``; ``gpu_memory`` in GiB (None: unknown)."""

    title: str
    launcher: str
    num_processes: int
    stages: list[Stage]
    gpu_memory: float | None = None
    advice: list[str] = field(default_factory=list)  # keys to change, largest saving first
    notes: list[str] = field(default_factory=list)  # printed under the table

    @property
    def peak(self) -> Stage:
        return max(self.stages, key=lambda stage: stage.total)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory is None else self.peak.total <= self.gpu_memory * GIB

    def format(self) -> str:
        names = list(dict.fromkeys(item.name for stage in self.stages for item in stage.items))
        labels = {
            name: name + (" ~" if any(not i.static for s in self.stages for i in s.items if i.name == name) else "")
            for name in names
        }
        width = max(len(label) for label in [*labels.values(), "total"])
        columns = [max(12, len(stage.name)) for stage in self.stages]
        unit, unit_name = (GIB, "GiB") if self.peak.total >= GIB else (2**20, "MiB")

        def row(label: str, cells: list[str]) -> str:
            return f"{label:{width}}  " + "  ".join(f"{cell:>{column}}" for cell, column in zip(cells, columns))

        lines = [
            f"memory plan: {self.title}; {self.num_processes} process(es), {self.launcher}; {unit_name} per rank",
            row("", [stage.name for stage in self.stages]),
        ]
        for name in names:
            lines.append(row(labels[name], [_amount(stage.bytes_of(name), unit) for stage in self.stages]))
        lines.append(row("total", [_amount(stage.total, unit) for stage in self.stages]))
        peak = self.peak
        verdict = f"peak {peak.total / unit:.2f} {unit_name} per rank ({peak.name})"
        if self.fits is not None:
            verdict += f": {'fits' if self.fits else 'does not fit'} in {self.gpu_memory:g} GiB"
        lines.append(verdict + ("; ~ marks an estimate" if any(not i.static for i in peak.items) else ""))
        if self.fits is False and self.advice:
            lines.append("to fit, change: " + "; ".join(self.advice))
        return "\n".join([*lines, *self.notes])


def _amount(size: int, unit: int) -> str:
    """``size`` in ``unit`` with 3 decimals; ``-`` for nothing, ``<0.001`` below that."""
    return "-" if size == 0 else "<0.001" if size < unit / 2000 else f"{size / unit:.3f}"


def check_launcher(launcher: str, num_processes: int) -> None:
    """Refuse an unknown launcher or process count, naming the option."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher {launcher!r} is not one of {', '.join(LAUNCHERS)}")
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {num_processes}")
    if launcher != "ddp" and num_processes == 1:
        raise ConfigError(f"{launcher} shards over processes: with --num-processes 1 use ddp (one device)")


def refuse_if_unsupported(launcher: str, who: str, reads: str) -> None:
    """The recipe's own launcher check (:func:`hf_ext.distributed.check_launcher`) for a planned launcher."""
    from types import SimpleNamespace

    from . import distributed

    if launcher == "ddp":
        return
    stage = {"fsdp2": None, "zero2": SimpleNamespace(zero_stage=2)}[launcher]
    args = SimpleNamespace(fsdp="full_shard" if launcher == "fsdp2" else "", deepspeed=stage, deepspeed_plugin=stage)
    distributed.check_launcher(args, who, reads)


def meta_model(model_args, tokenizer, labels: list[str] | None) -> nn.Module:
    """The model of ``model_args`` on the meta device: shapes and dtypes, no weights read."""
    from transformers import AutoConfig

    from .models import TINY_PREFIX, _auto_class, _tiny_architecture, resolve_model_path, tiny_config

    name = model_args.model_name_or_path
    extra = {}
    if model_args.task_type == "seq_cls":
        extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels))}
    if name.startswith(TINY_PREFIX):
        config = tiny_config(_tiny_architecture(name), tokenizer, **extra)
    elif name in KNOWN_CONFIGS and not _found_locally(name):
        known = dict(KNOWN_CONFIGS[name])
        config = AutoConfig.for_model(known.pop("model_type"), **known, **extra)
    else:
        try:
            config = AutoConfig.from_pretrained(
                resolve_model_path(name),
                local_files_only=True,
                trust_remote_code=model_args.trust_remote_code,
                **extra,
            )
        except OSError:
            raise ConfigError(
                f"the config of {name} is not on this machine (no directory, not in the Hugging Face cache): "
                "download its config.json into a directory and set model_name_or_path to it"
            ) from None
    if model_args.dtype == "auto":  # the checkpoint's dtype, as from_pretrained(dtype="auto") loads it
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        dtype = getattr(torch, saved) if isinstance(saved, str) else saved
    else:
        dtype = getattr(torch, model_args.dtype)
    extra = {"attn_implementation": model_args.attn_implementation} if model_args.attn_implementation else {}
    with torch.device("meta"):
        return _auto_class(model_args.task_type).from_config(
            config, dtype=dtype, trust_remote_code=model_args.trust_remote_code, **extra
        )


def _found_locally(name: str) -> bool:
    from transformers.utils import cached_file

    try:
        return cached_file(name, "config.json", local_files_only=True) is not None
    except OSError:
        return False


def tensor_bytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def rank_bytes(tensor: torch.Tensor, launcher: str, num_processes: int, *, sharded_by: str = "fsdp2") -> int:
    """Bytes rank 0 holds of ``tensor`` when ``launcher`` shards it (``sharded_by``: the launchers that do)."""
    if launcher not in sharded_by.split("|") or num_processes == 1 or tensor.ndim == 0:
        return tensor.numel() * tensor.dtype.itemsize
    if launcher == "fsdp2":  # torch.chunk along dim 0
        rows = -(-tensor.shape[0] // num_processes)
        return rows * math.prod(tensor.shape[1:]) * tensor.dtype.itemsize
    return -(-tensor.numel() // num_processes) * tensor.dtype.itemsize  # ZeRO: flat partitions


def row_block_bytes(rows: int, cols: int, dtype: torch.dtype, launcher: str, num_processes: int) -> int:
    """Bytes rank 0 holds of a ``rows x cols`` tensor kept with its parameter's rows (FSDP2: sharded alike)."""
    if launcher == "fsdp2":
        rows = -(-rows // num_processes)
    return rows * cols * dtype.itemsize


def statistics_bytes(modules: dict[str, nn.Module], outputs: set[str], compute_dtype: torch.dtype) -> int:
    """What :class:`~hf_ext.activations.InputStatistics` allocates for ``modules`` (:func:`distinct_inputs`): per
    distinct input, the float64 ``X^T X`` and sum, a count, and a ``compute_dtype`` buffer."""
    return sum(w * w * (8 + compute_dtype.itemsize) + w * 8 + 8 for w in distinct_inputs(modules, outputs))


def distinct_inputs(modules: dict[str, nn.Module], outputs: set[str]) -> list[int]:
    """The input width of each distinct input of ``modules`` (linear layers by name, in model order): consecutive
    siblings of one input width share an input (q/k/v, gate/up), except an attention output projection
    (``outputs``), whose input is the heads' output."""
    from .activations import _sibling_runs

    widths = []
    for run in _sibling_runs(modules):
        starts = [i for i, (name, _) in enumerate(run) if i == 0 or name in outputs or run[i - 1][0] in outputs]
        widths += [run[0][1].in_features] * len(starts)
    return widths


def gradient_bytes(params: Iterable[torch.Tensor], launcher: str, num_processes: int) -> int:
    """Gradients of ``params`` on rank 0: whole (DDP), sharded as the parameter (FSDP2), or a float32 partition of
    the reduced gradient (ZeRO-2)."""
    if launcher == "zero2" and num_processes > 1:
        return sum(-(-p.numel() // num_processes) * 4 for p in params)
    return sum(rank_bytes(p, launcher, num_processes) for p in params)


def optimizer_state_bytes(params: Iterable[torch.Tensor], optim: str, launcher: str, num_processes: int) -> int:
    """AdamW (every ``adamw*``): two moments of each parameter's shape and dtype and a float32 step per tensor
    (ZeRO-2: float32 moments, and a float32 master copy of a 16-bit parameter, partitioned); plain SGD (``sgd``,
    momentum 0): none. Other optimizers are refused."""
    optim = getattr(optim, "value", optim)
    if optim == "sgd":
        return 0
    if not optim.startswith("adamw"):
        raise ConfigError(f"optim {optim!r}: the plan knows adamw_* and sgd")
    total = 0
    for p in params:
        if launcher == "zero2" and num_processes > 1:
            total += -(-p.numel() // num_processes) * 4 * (2 if p.dtype.itemsize >= 4 else 3) + 4
        else:
            total += 2 * rank_bytes(p, launcher, num_processes) + 4
    return total


def add_launcher_items(stage: Stage, model: nn.Module, reduced: list[torch.Tensor], launcher: str, n: int) -> None:
    """What the launcher itself holds beyond the items: DDP's gradient buckets (a second copy of every gradient it
    all-reduces, ``reduced``; accelerate leaves ``gradient_as_bucket_view`` off), or FSDP2's all-gathered weights
    (the root's parameters, which FSDP2 keeps whole from forward to backward, and two blocks, the running and the
    prefetched one; an estimate)."""
    from .targets import find_blocks

    if launcher == "ddp" and n > 1:
        stage.add("DDP gradient buckets", sum(p.numel() * p.dtype.itemsize for p in reduced))
    if launcher == "fsdp2":
        blocks = find_blocks(model)[1]
        inside = {id(p) for block in blocks for p in block.parameters()}
        root = sum(p.numel() * p.dtype.itemsize for p in model.parameters() if id(p) not in inside)
        largest = max(sum(p.numel() * p.dtype.itemsize for p in block.parameters()) for block in blocks)
        stage.add("gathered weights", root + 2 * largest, static=False)


def activation_estimate(
    model: nn.Module, batch_size: int, seq_len: int, *, training: bool, checkpointing: bool
) -> int:
    """Activations of one micro-batch. A training step without gradient checkpointing: what autograd saves for the
    backward, counted by running the forward on the meta device (:func:`saved_activation_bytes`), plus a causal
    LM's three further float32 copies of the logits (their log-softmax's gradient, the logits' and its cast). Else,
    or when the forward cannot run on meta, Korthikanti et al. 2022's count (16-bit: ``s b h (34 + 5 a s / h)``
    bytes per layer, scaled to the model's dtype; the attention scores' ``5 a s / h`` only with eager attention):
    with gradient checkpointing each layer's input and one layer at a time; a forward without gradients (phase 1's
    statistics, evaluation) about one layer's."""
    causal_lm = type(model).__name__.endswith("ForCausalLM")
    logits = (
        batch_size * seq_len * model.config.vocab_size * 4
        if causal_lm
        else 2 * batch_size * model.config.num_labels * 4
    )
    if training and not checkpointing:
        saved = saved_activation_bytes(model, batch_size, seq_len)
        if saved is not None:
            return saved + (3 * logits if causal_lm else 0)
    config = model.config
    hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    scale = next(model.parameters()).dtype.itemsize / 2
    scores = 5 * heads * seq_len / hidden if getattr(config, "_attn_implementation", "eager") == "eager" else 0
    per_layer = seq_len * batch_size * hidden * (34 + scores) * scale
    if not training:
        return int(per_layer)
    kept = layers * seq_len * batch_size * hidden * 2 * scale + per_layer if checkpointing else layers * per_layer
    return int(kept + (4 if causal_lm else 1) * logits)


def saved_activation_bytes(model: nn.Module, batch_size: int, seq_len: int) -> int | None:
    """Bytes of the tensors autograd saves for the backward of one training micro-batch of ``model`` (on the meta
    device, with the ``requires_grad`` flags of what trains), counted while its forward runs on meta in train mode:
    exact for the model's own code path (frozen layers that save no input, dropout masks, LoRA's extra inputs, the
    attention implementation's choices), without memory. None when the forward cannot run on meta."""
    was_training = model.training
    model.train()
    try:
        return saved_bytes(lambda: model(**meta_batch(model, batch_size, seq_len)), model)
    finally:
        model.train(was_training)


def saved_bytes(forward, model: nn.Module) -> int | None:
    """Bytes of the distinct storages autograd saves while ``forward()`` runs (on the meta device: no memory used),
    ``model``'s parameters and buffers not counted. None when the forward cannot run on meta (an op without a meta
    kernel, remote code that reads tensor values).

    ``scaled_dot_product_attention`` without dropout is counted as the fused kernels the real devices run save
    (query, key, value, output and the float32 log-sum-exp of each query; flash attention on CUDA and on the CPU
    alike), not as the math path meta tensors take, which would keep every layer's ``batch x heads x length x
    length`` probabilities. With attention dropout (BERT-like models in training) the math path is counted: the
    CPU takes it; CUDA's flash attention would save less."""
    own = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}
    counting, alive = [True], []  # alive: what the fused kernels would save, held so no storage is reused

    def keep(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
            alive.append(tensor)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if counting[0]:
            keep(tensor)
        return tensor

    class FusedAttention(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            dropout = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
            if func is not torch.nn.functional.scaled_dot_product_attention or dropout:
                return func(*args, **kwargs)
            counting[0] = False
            try:  # laid out as the fused kernels lay theirs out, batch x length x heads x dim, so that the
                # attention layer's transpose back is a view of it, as on the real devices
                output = func(*args, **kwargs).transpose(1, 2).contiguous().transpose(1, 2)
            finally:
                counting[0] = True
            query, key, value = args[:3]
            if not output.requires_grad:  # nothing before it trains: the kernel saves nothing
                return output
            for tensor in (query, key, value, output):
                keep(tensor)
            log_sum_exp = torch.empty(query.shape[:-1], dtype=torch.float32, device="meta")
            keep(log_sum_exp)
            return output

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), FusedAttention():
            forward()
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    return sum(saved.values())


def meta_batch(model: nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A full-length batch on the meta device: token ids and labels (a class per example, or the tokens themselves
    for a causal LM). No attention mask: a full batch needs none, and building one reads values meta has not."""
    tokens = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    causal_lm = type(model).__name__.endswith("ForCausalLM")
    labels = tokens if causal_lm else torch.zeros(batch_size, dtype=torch.long, device="meta")
    return {"input_ids": tokens, "labels": labels}


def label_names(data_args, task_type: str) -> list[str] | None:
    """The classes of a ``seq_cls`` dataset (read from the data, not tokenized); None for ``causal_lm``."""
    from .data import infer_label_names, load_raw_datasets

    if task_type != "seq_cls":
        return None
    return infer_label_names(load_raw_datasets(data_args), data_args)


def local_tokenizer(model_args):
    """The tokenizer when it is on this machine (tiny and embedded models, directories, the cache); else None:
    models the plan builds from a known or cached config need none."""
    from .models import TINY_PREFIX, load_tokenizer

    name = model_args.model_name_or_path
    if name.startswith(TINY_PREFIX) or name.startswith("embedded:") or _found_locally(name):
        return load_tokenizer(name, trust_remote_code=model_args.trust_remote_code)
    return None


# recipe: the module with its ARGUMENT_TYPES, LAUNCHER_CHECK and plan(args, launcher=, num_processes=, gpu_memory=)
RECIPES = {
    "warp.py": "hf_ext.warp.plan",
    "lora_null.py": "hf_ext.lora_null.plan",
    "seq_cls.py": "hf_ext.selective.plan",
    "finetune.py": "hf_ext.finetune_plan",
    "drift.py": "hf_ext.drift.plan",
    "head_plasticity.py": "hf_ext.heads.plan",
    "lora_null_preservation.py": "hf_ext.lora_null.preservation_plan",
}


def plan_config(
    argv: list[str], *, launcher: str = "ddp", num_processes: int = 1, gpu_memory: float | None = None
) -> Plan:
    """The plan of ``config.json [key=value ...]`` for the recipe it belongs to: of the recipes whose arguments it
    parses as, the one whose technique keys it sets most (then the one with the fewest argument classes, so a config
    that sets none is recipes/finetune.py's)."""
    import dataclasses
    import importlib
    import json
    from pathlib import Path

    from .parsing import parse_config

    check_launcher(launcher, num_processes)
    path = Path(argv[0])
    if not path.exists():
        raise ConfigError(f"config file {path} not found")
    if not path.is_file():
        raise ConfigError(f"{path} is not a file: name a recipe's JSON config")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{path} holds no keys: a config is a JSON object of the recipe's keys")
    keys = set(values) | {item.split("=", 1)[0] for item in argv[1:]}
    candidates, refusals = [], {}
    for recipe, module_name in RECIPES.items():
        module = importlib.import_module(module_name)
        try:  # use_cpu: a bf16 config parses on a machine without a GPU (the plan reads no device)
            args = parse_config(module.ARGUMENT_TYPES, [*argv, "use_cpu=true"], recipe=recipe)
        except ConfigError as err:
            refusals[recipe] = str(err)
            continue
        own = module.ARGUMENT_TYPES[2:-1]  # between the model/data and the training arguments
        technique = {f.name for cls in own for f in dataclasses.fields(cls)}
        candidates.append((-len(keys & technique), len(module.ARGUMENT_TYPES), module, args))
    if not candidates:
        unknown = {
            recipe: len(
                keys
                - {f.name for cls in importlib.import_module(name).ARGUMENT_TYPES for f in dataclasses.fields(cls)}
            )
            for recipe, name in RECIPES.items()
        }
        recipe = min(unknown, key=unknown.get)
        if unknown[recipe] <= 2:  # a config of that recipe with a mistake in it
            raise ConfigError(f"as a config of recipes/{recipe}: {refusals[recipe]}")
        raise ConfigError(f"{path} is not a config of a recipe hf-ext plan knows ({', '.join(RECIPES)})")
    _, _, module, args = min(candidates, key=lambda c: c[:2])
    args[-1].use_cpu = _wants_cpu(values, argv[1:])  # the plans that count host memory read the user's own setting
    return module.plan(args, launcher=launcher, num_processes=num_processes, gpu_memory=gpu_memory)


def _wants_cpu(values: dict, overrides: list[str]) -> bool:
    wanted = values.get("use_cpu", False)
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "use_cpu":
            wanted = value.strip().lower() in ("true", "1", "yes")
    return bool(wanted)


def print_start_plan(module_name: str, run_args) -> None:
    """What a recipe does before it loads anything: refuse a launcher it cannot run under (the plan module's
    ``LAUNCHER_CHECK``, :func:`hf_ext.distributed.check_launcher`), then print its plan for this launcher, process
    count and GPU on the main process; a plan that cannot be made (a model whose config is not on this machine, an
    optimizer the plan does not know) is one line, never an error."""
    import importlib

    from . import distributed

    module = importlib.import_module(module_name)
    training_args = run_args[-1]
    if module.LAUNCHER_CHECK is not None:
        distributed.check_launcher(training_args, *module.LAUNCHER_CHECK)
    launcher = {None: "ddp", "FSDP": "fsdp2", "DeepSpeed ZeRO-2": "zero2"}.get(
        distributed.sharded_launcher(training_args)
    )
    processes = training_args.world_size
    if launcher is None or (launcher != "ddp" and processes == 1):
        return  # a launcher the plan does not model (ZeRO-1, a sharded launcher on one process)
    device = training_args.device
    gpu_memory = torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else None
    try:
        text = module.plan(run_args, launcher=launcher, num_processes=processes, gpu_memory=gpu_memory).format()
        text += "\n(hf-ext plan CONFIG prints this for any launcher and process count)"
    except (HfExtError, OSError, ValueError, RuntimeError) as err:  # the plan informs; it never stops a run
        text = f"memory plan: not printed ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if training_args.process_index == 0:
        print(text, flush=True)
