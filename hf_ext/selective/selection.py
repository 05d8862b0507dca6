"""Choose what trains: blocks by index, modules inside them by regex, the task head; then freeze the
rest, or put peft LoRA adapters on the chosen linear layers, and attach the no-grad prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..targets import _is_linear, find_blocks
from .config import SelectiveArguments, resolve_train_layers
from .prefix import attach_no_grad_prefix


@dataclass
class Selection:
    """What :func:`select_trainable` decided, for reports and tests."""

    blocks_name: str
    num_blocks: int
    layers: list[int]
    modules: dict[str, str]  # full name -> name relative to its block
    head: list[str]
    extra: list[str]
    finetuning: str

    @property
    def prefix_blocks(self) -> int:
        """Blocks below the first trained one (every block when none trains): they run without autograd."""
        return self.layers[0] if self.layers else self.num_blocks


def head_modules(model: nn.Module) -> list[str]:
    """Top-level modules outside the base model that hold parameters: ``classifier``, ``score``, DeBERTa's
    ``pooler``."""
    prefix = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children() if name != prefix and any(True for _ in child.parameters())]


def block_modules(model: nn.Module, layers: list[int], pattern: str | None, *, linear_only: bool) -> dict[str, str]:
    """``{full name: name relative to its block}`` of the modules inside ``layers`` that train.

    ``pattern`` is searched (``re.search``) in the relative names; ``None`` takes every module that holds
    parameters directly (or every linear layer when ``linear_only``).
    """
    if not layers:
        return {}
    blocks_name, blocks = find_blocks(model)
    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as err:
        raise ConfigError(f"train_modules={pattern!r} is not a regular expression: {err}") from None
    chosen: dict[str, str] = {}
    candidates: set[str] = set()
    for index in layers:
        for relative, module in blocks[index].named_modules():
            owns = _is_linear(module) if linear_only else any(True for _ in module.parameters(recurse=False))
            if not relative or not owns or "lora_" in relative or relative.endswith("base_layer"):
                continue
            candidates.add(relative)
            if regex is None or regex.search(relative):
                chosen[f"{blocks_name}.{index}.{relative}"] = relative
    if not chosen:
        kind = "linear layers" if linear_only else "modules with parameters"
        shown = ", ".join(sorted(candidates)[:12])
        raise ConfigError(
            f"train_modules={pattern!r} matches none of the {kind} inside blocks {_ranges(layers)} of "
            f"{type(model).__name__}; their names relative to a block are: {shown}"
        )
    return chosen


def _ranges(layers: list[int]) -> str:
    if len(layers) == 1:
        return str(layers[0])
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)


def _extra_modules(model: nn.Module, pattern: str | None) -> list[str]:
    if pattern is None:
        return []
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"train_extra_modules={pattern!r} is not a regular expression: {err}") from None
    found = [n for n, m in model.named_modules() if n and regex.search(n) and any(True for _ in m.parameters())]
    if not found:
        raise ConfigError(
            f"train_extra_modules={pattern!r} matches no module with parameters of {type(model).__name__}; "
            f"top-level modules: {', '.join(n for n, _ in model.named_children())}"
        )
    return [n for n in found if not any(n.startswith(f + ".") for f in found)]


def plan_selection(model: nn.Module, args: SelectiveArguments) -> Selection:
    """Resolve ``args`` against ``model``: every name checked, nothing changed yet."""
    blocks_name, blocks = find_blocks(model)
    layers = resolve_train_layers(args.train_layers, len(blocks))
    if not layers and (args.finetuning == "lora" or not args.train_head):
        raise ConfigError(
            "train_layers='none' trains the head alone: it needs finetuning='full' and train_head=true (a LoRA "
            "adapter or a frozen head would leave nothing to train)"
        )
    modules = block_modules(model, layers, args.train_modules, linear_only=args.finetuning == "lora")
    head = head_modules(model) if args.train_head else []
    extra = _extra_modules(model, args.train_extra_modules)
    first = layers[0] if layers else len(blocks)
    below = _below_prefix(model, blocks_name, first, extra)
    if below:
        raise ConfigError(
            f"train_extra_modules={args.train_extra_modules!r} matches {below[0]!r}, which runs below the first "
            f"trained block ({first}): the no-grad prefix gives it no gradient; include block 0 in train_layers "
            "or narrow train_extra_modules"
        )
    overlap = [n for n in extra if any(m == n or m.startswith(n + ".") for m in modules)]
    if overlap and args.finetuning == "lora":
        raise ConfigError(
            f"train_extra_modules={args.train_extra_modules!r} matches {overlap[0]!r}, which holds LoRA targets of "
            "train_modules: a module cannot both get an adapter and train in full; narrow one of the two"
        )
    tied = _tied_to_input_embeddings(model, [*head, *extra]) if first > 0 else []
    if tied:
        raise ConfigError(
            f"{tied[0]!r} shares its weight with the input embeddings, which run below the no-grad prefix: training "
            "it would change the embeddings too, with no gradient from the input side; set train_head=false, untie "
            "the weights, or include block 0 in train_layers"
        )
    return Selection(blocks_name, len(blocks), layers, modules, head, extra, args.finetuning)


def _tied_to_input_embeddings(model: nn.Module, names: list[str]) -> list[str]:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    return [n for n in names if any(id(p) in shared for p in model.get_submodule(n).parameters())]


def _below_prefix(model: nn.Module, blocks_name: str, first: int, names: list[str]) -> list[str]:
    if first == 0:
        return []
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embedding_names = {n for n, m in model.named_modules() if m is embeddings}
    prefix_blocks = tuple(f"{blocks_name}.{i}" for i in range(first))
    return [
        n
        for n in names
        if n in embedding_names
        or "embed" in n.rsplit(".", 1)[-1]
        or any(n == b or n.startswith(b + ".") for b in prefix_blocks)
        or blocks_name.startswith(n + ".")
    ]


def select_trainable(
    model: nn.Module, args: SelectiveArguments, task_type: str = "seq_cls", *, seed: int = 0, no_grad_prefix=True
):
    """Make only the selection of ``args`` train and attach the no-grad prefix; returns ``(model, selection)``.

    ``finetuning="full"``: exactly the chosen modules, the head and the extra modules have
    ``requires_grad=True``. ``finetuning="lora"``: the model is wrapped by peft (``get_peft_model``, adapters
    drawn from ``seed`` without touching the global RNG) with adapters on the chosen linear layers
    (``layers_to_transform`` + ``target_modules``), the head and extra modules in ``modules_to_save``.
    ``no_grad_prefix=False`` freezes the prefix the usual way (``requires_grad=False`` only): the
    baseline the benchmark compares against. ``model`` must be a plain transformers model (not peft-wrapped)
    of ``task_type`` (``seq_cls``: a ``...ForSequenceClassification``; ``causal_lm``: a ``...ForCausalLM``).
    """
    _check_model(model, task_type)
    selection = plan_selection(model, args)
    if args.finetuning == "lora":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _wrap_lora(model, args, task_type, selection)
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for name in [*selection.modules, *selection.head, *selection.extra]:
            for parameter in model.get_submodule(name).parameters():
                parameter.requires_grad_(True)
    if no_grad_prefix:
        attach_no_grad_prefix(model, selection.prefix_blocks)
    return model, selection


def _check_model(model: nn.Module, task_type: str) -> None:
    if hasattr(model, "peft_config"):
        raise ConfigError(
            f"{type(model).__name__} is already wrapped by peft; pass the base model (peft_model.unload() returns it)"
        )
    suffix = {"seq_cls": "ForSequenceClassification", "causal_lm": "ForCausalLM"}.get(task_type)
    if suffix is None:
        raise ConfigError(f"task_type={task_type!r}: expected 'seq_cls' or 'causal_lm'")
    if not type(model).__name__.endswith(suffix):
        raise ConfigError(f"task_type={task_type!r} needs a ...{suffix} model, got {type(model).__name__}")


def _wrap_lora(model: nn.Module, args: SelectiveArguments, task_type: str, selection: Selection):
    from peft import get_peft_model

    relative = sorted(set(selection.modules.values()))
    pattern = selection.blocks_name.rsplit(".", 1)[-1]
    blocks = model.get_submodule(selection.blocks_name)
    linear = {r for i in selection.layers for r, m in blocks[i].named_modules() if _is_linear(m)}
    targets = []
    for name in relative:
        if any(other != name and other.endswith("." + name) for other in linear):  # peft matches by suffix
            targets += [f"{pattern}.{i}.{name}" for i in selection.layers]
        else:
            targets.append(name)
    config = args.lora_config(
        task_type,
        target_modules=targets,
        layers_to_transform=selection.layers,
        layers_pattern=pattern,
        modules_to_save=[*selection.head, *selection.extra] or None,
    )
    peft_model = get_peft_model(model, config)
    adapted = sorted(
        n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")
    )
    if adapted != sorted(selection.modules):
        raise RuntimeError(f"peft adapted {adapted}, expected {sorted(selection.modules)}")
    if not args.train_head:  # peft's SEQ_CLS task adds classifier/score to modules_to_save by itself
        for name in head_modules(model):
            for parameter in model.get_submodule(name).parameters():
                parameter.requires_grad_(False)
    return peft_model
