"""Pick modules to study: linear layers by name pattern, transformer blocks, attention heads; make
exactly the chosen parameters trainable.

Name patterns
-------------
A pattern is matched against the end of a module's dotted name, component by component, so
``"mlp.down_proj"`` selects the down projection of every block and ``"layers.31.mlp.down_proj"``
one of them, whatever prefix (``model.``, ``base_model.model.``) the model adds. Inside a pattern:

- ``*`` matches any characters inside one component (``"layers.3.self_attn.*_proj"``);
- ``[28-31]``, ``[0,2,5-7]`` match a component that is one of these integers;
- a component ``**`` matches any number of components (``"layers.0.**"``);
- a pattern that starts with ``re:`` is a regular expression matched against the whole name
  (``re.fullmatch``), for anything the short form cannot say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from .errors import ConfigError

_INT_SET = re.compile(r"\[\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*\]")


def parse_int_set(spec: str) -> list[int]:
    """``"28-31"`` -> [28, 29, 30, 31]; ``"0,2,5-7"`` -> [0, 2, 5, 6, 7] (sorted, unique)."""
    values: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ConfigError(f"cannot read {spec!r} as a set of integers; write it like '28-31' or '0,2,5-7'")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ConfigError(f"range {part!r} in {spec!r} runs backwards")
        values.update(range(first, last + 1))
    if not values:
        raise ConfigError(f"{spec!r} names no integers")
    return sorted(values)


def _component_regex(component: str) -> str:
    out, pos = [], 0
    for match in _INT_SET.finditer(component):
        out.append(re.escape(component[pos : match.start()]).replace(r"\*", "[^.]*"))
        numbers = parse_int_set(match.group(0)[1:-1])
        out.append("(?:" + "|".join(str(n) for n in numbers) + ")")
        pos = match.end()
    out.append(re.escape(component[pos:]).replace(r"\*", "[^.]*"))
    return "".join(out)


def pattern_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a module-name pattern (see the module docstring) to a regex for ``fullmatch``."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as err:
            raise ConfigError(f"invalid regular expression in target pattern {pattern!r}: {err}") from None
    if not pattern or pattern.startswith(".") or pattern.endswith(".") or ".." in pattern:
        raise ConfigError(
            f"invalid target pattern {pattern!r}: expected dotted names like 'layers.[28-31].mlp.down_proj'"
        )
    parts = pattern.split(".")
    body = []
    for i, component in enumerate(parts):
        last = i == len(parts) - 1
        if component == "**":
            body.append(r"[^.]+(?:\.[^.]+)*" if last else r"(?:[^.]+\.)*")
        else:
            body.append(_component_regex(component) + ("" if last else r"\."))
    return re.compile(r"(?:.*\.)?" + "".join(body))


def match_modules(model: nn.Module, patterns: str | Iterable[str]) -> dict[str, nn.Module]:
    """All modules (of any type) whose name matches any of ``patterns``, in model order."""
    regexes = [pattern_to_regex(p) for p in _as_list(patterns)]
    return {name: m for name, m in model.named_modules() if name and any(r.fullmatch(name) for r in regexes)}


def select_linear(
    model: nn.Module, patterns: str | Iterable[str], *, layers: str | Iterable[int] | None = None
) -> dict[str, nn.Linear]:
    """Select ``nn.Linear`` modules by name pattern and, optionally, by transformer-block index.

    Args:
        model: any model; names are those of ``model.named_modules()``.
        patterns: one pattern or several (a module is selected if any matches). Every pattern must
            select at least one linear module, so a typo is an error rather than a silent no-op.
        layers: keep only modules inside these blocks: ``"28-31"``, ``"0,2,5-7"`` or a list of ints.

    Returns:
        ``{name: module}`` in the order of ``model.named_modules()``.
    """
    patterns = _as_list(patterns)
    if not patterns:
        raise ConfigError("no target patterns given; pass e.g. 'mlp.down_proj' or 'layers.[28-31].mlp.*'")
    block_of = _block_index_fn(model) if layers is not None else None
    wanted_layers = set(parse_int_set(layers) if isinstance(layers, str) else layers or [])
    if layers is not None:
        count = len(find_blocks(model)[1])
        absent = sorted(wanted_layers - set(range(count)))
        if absent:
            raise ConfigError(f"layers {absent} do not exist: {type(model).__name__} has blocks 0-{count - 1}")
    linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    selected: dict[str, nn.Linear] = {}
    for pattern in patterns:
        regex = pattern_to_regex(pattern)
        matched = [n for n, _ in model.named_modules() if n and regex.fullmatch(n)]
        hits = [n for n in matched if isinstance(model.get_submodule(n), nn.Linear)]
        if block_of is not None:
            hits = [n for n in hits if block_of(n) in wanted_layers]
        if not hits:
            raise ConfigError(_no_match_message(model, pattern, matched, linear_names, layers))
        selected.update((n, model.get_submodule(n)) for n in hits)
    order = {n: i for i, n in enumerate(linear_names)}
    return dict(sorted(selected.items(), key=lambda item: order[item[0]]))


def set_trainable(model: nn.Module, params: Iterable[nn.Parameter], extra_patterns: Iterable[str] = ()) -> int:
    """Make exactly ``params`` plus every parameter of the modules matching ``extra_patterns`` trainable.

    Everything else gets ``requires_grad=False``. Returns the number of trainable entries (a
    parameter shared by several modules counts once). A pattern that matches no module is an error.
    """
    extra_patterns = _as_list(extra_patterns)
    extra = match_modules(model, extra_patterns) if extra_patterns else {}
    if extra_patterns and not extra:
        raise ConfigError(
            f"extra trainable module pattern(s) {extra_patterns} match no module of {type(model).__name__}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = {id(p): p for p in [*params, *(p for m in extra.values() for p in m.parameters())]}
    for p in trainable.values():
        p.requires_grad_(True)
    return sum(p.numel() for p in trainable.values())


def _no_match_message(
    model: nn.Module, pattern: str, matched: list[str], linear_names: list[str], layers: object
) -> str:
    if matched and not any(isinstance(model.get_submodule(n), nn.Linear) for n in matched):
        kinds = sorted({type(model.get_submodule(n)).__name__ for n in matched})
        return (
            f"target pattern {pattern!r} matches {len(matched)} module(s) but none is nn.Linear "
            f"(found {', '.join(kinds)}, e.g. {matched[0]!r}); point it at the linear layers inside"
        )
    where = f" inside layers {layers!r}" if layers is not None and matched else ""
    examples = ", ".join(linear_names[:3] + ([linear_names[-1]] if len(linear_names) > 3 else []))
    return (
        f"target pattern {pattern!r} matches no nn.Linear module{where} of {type(model).__name__}; "
        f"its linear modules are named like: {examples}"
    )


def _as_list(patterns: str | Iterable[str]) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


# Relative names of (query, key, value, output) projections inside one transformer block.
ATTENTION_LAYOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),  # Llama, Qwen2, Mistral
    ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),  # BERT
    (
        "attention.self.query_proj",
        "attention.self.key_proj",
        "attention.self.value_proj",
        "attention.output.dense",
    ),  # DeBERTa-v2
)


@dataclass(frozen=True)
class AttentionModules:
    """Where one block's attention lives: full module names and the head geometry.

    The input of ``o`` is the concatenation of the query heads' outputs: slice
    ``h * head_dim : (h + 1) * head_dim`` belongs to head ``h``. Query head ``h`` reads key/value
    head ``h // (num_heads // num_kv_heads)`` (grouped-query attention).
    """

    layer: int
    q: str
    k: str
    v: str
    o: str
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks: the longest ``nn.ModuleList`` whose blocks hold attention.

    Returns ``(name, module_list)``, e.g. ``("model.layers", ...)`` or ``("bert.encoder.layer", ...)``.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and _layout_of(module[0]) is not None:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        looked_for = ", ".join(layout[3] for layout in ATTENTION_LAYOUTS)
        raise ValueError(
            f"cannot find the transformer blocks of {type(model).__name__}: looked for an nn.ModuleList whose "
            f"blocks contain an attention output projection named one of [{looked_for}]. "
            "Add the architecture's (q, k, v, o) names to hf_ext.targets.ATTENTION_LAYOUTS"
        )
    return best


def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear``, or an adapter layer (peft LoRA) wrapping one as ``base_layer``."""
    return isinstance(module, nn.Linear) or isinstance(getattr(module, "base_layer", None), nn.Linear)


def _layout_of(block: nn.Module) -> tuple[str, str, str, str] | None:
    names = {n for n, m in block.named_modules() if _is_linear(m)}
    return next((layout for layout in ATTENTION_LAYOUTS if set(layout) <= names), None)


def find_attention(model: nn.Module) -> list[AttentionModules]:
    """One :class:`AttentionModules` per transformer block, for BERT, DeBERTa-v2, Llama, Qwen2 and kin.

    Head counts come from ``model.config`` (``num_attention_heads``, ``num_key_value_heads``,
    ``head_dim``) and are checked against the projection shapes.
    """
    prefix, blocks = find_blocks(model)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no .config; head counts cannot be read")
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_heads = config.num_attention_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    found = []
    for index, block in enumerate(blocks):
        layout = _layout_of(block)
        if layout is None:
            raise ValueError(f"block {prefix}.{index} has none of the attention layouts {ATTENTION_LAYOUTS}")
        q, k, v, o = (f"{prefix}.{index}.{rel}" for rel in layout)
        modules = AttentionModules(index, q, k, v, o, num_heads, num_kv_heads, head_dim)
        _check_geometry(model, modules)
        found.append(modules)
    return found


def _check_geometry(model: nn.Module, a: AttentionModules) -> None:
    expected = {
        a.q: ("out_features", a.num_heads * a.head_dim),
        a.k: ("out_features", a.num_kv_heads * a.head_dim),
        a.v: ("out_features", a.num_kv_heads * a.head_dim),
        a.o: ("in_features", a.num_heads * a.head_dim),
    }
    for name, (attr, size) in expected.items():
        actual = getattr(model.get_submodule(name), attr)
        if actual != size:
            raise ValueError(
                f"{name}.{attr} is {actual}, but the config gives heads={a.num_heads}, kv_heads={a.num_kv_heads}, "
                f"head_dim={a.head_dim} (expected {size}); the config does not describe this model"
            )


def _block_index_fn(model: nn.Module):
    prefix, _ = find_blocks(model)
    block = re.compile(re.escape(prefix) + r"\.(\d+)(?:\.|$)")

    def block_of(name: str) -> int | None:
        match = block.match(name)
        return int(match.group(1)) if match else None

    return block_of
