"""``SelectiveArguments``: which blocks and modules train, and how (full or LoRA)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ..config import LoraShapeArguments, check_bounds
from ..errors import ConfigError
from ..targets import parse_int_set

FINETUNING = ("full", "lora")
_ANY_DEPTH = 2**31  # checks a train_layers spec's syntax before the model (and its block count) is known


@dataclass
class SelectiveArguments(LoraShapeArguments):
    """Train only some transformer blocks (and modules inside them); the blocks below run without autograd."""

    train_layers: str | None = field(
        default=None,
        metadata={
            "help": "Blocks that train: 'last:4' (the last four), '16-19', '0,2,5-7'; null: every block; 'none': "
            "no block, only the head (a probe on the frozen encoder). Blocks below the first one run under "
            "torch.no_grad() with their output detached."
        },
    )
    train_modules: str | None = field(
        default=None,
        metadata={
            "help": "Regular expression searched in module names relative to their block (e.g. 'q_proj|v_proj', "
            "'mlp\\.'); only matching modules of the chosen blocks train (full) or get adapters (lora). null: "
            "the whole block (full) or every linear layer in it (lora)."
        },
    )
    finetuning: Literal["full", "lora"] = field(
        default="full",
        metadata={"help": "'full': the selected weights train; 'lora': peft LoRA adapters on them (lora_* keys)."},
    )
    train_head: bool = field(
        default=True,
        metadata={
            "help": "Train the task head: every parameter outside the base model (classifier, score, DeBERTa's "
            "pooler). Embeddings, the final norm and BERT's pooler stay frozen unless train_extra_modules names them."
        },
    )
    train_extra_modules: str | None = field(
        default=None,
        metadata={
            "help": "Regular expression searched in full module names of further modules that train in full, e.g. "
            "'model\\.norm' or 'bert\\.pooler'. Nothing below the first trained block may match."
        },
    )

    def __post_init__(self):
        check_bounds(self)
        if self.finetuning not in FINETUNING:
            raise ConfigError(f"finetuning={self.finetuning!r}: expected one of {', '.join(map(repr, FINETUNING))}")
        if isinstance(self.train_layers, int) and not isinstance(self.train_layers, bool):
            self.train_layers = str(self.train_layers)  # one block index
        if self.train_layers is not None and not isinstance(self.train_layers, str):
            raise ConfigError(f"train_layers={self.train_layers!r}: expected text like 'last:2', '16-19' or '0,2'")
        if self.train_layers is not None:
            resolve_train_layers(self.train_layers, _ANY_DEPTH)
        for key in ("train_modules", "train_extra_modules"):
            pattern = getattr(self, key)
            try:
                re.compile(pattern or "")
            except (re.error, TypeError) as err:
                raise ConfigError(f"{key}={pattern!r} is not a regular expression: {err}") from None


def resolve_train_layers(spec: str | int | None, num_blocks: int) -> list[int]:
    """``"last:4"``, ``"16-19"``, ``"0,2,5-7"``, ``None`` (every block) or ``"none"`` (no block) -> sorted block
    indices."""
    valid = f"the model has blocks 0-{num_blocks - 1}"
    if spec is None:
        return list(range(num_blocks))
    text = str(spec).strip()
    if text == "none":
        return []
    if not text:
        raise ConfigError(
            "train_layers is empty; name blocks like 'last:2', '16-19' or '0,2', null for every block, or 'none' for "
            "the head alone"
        )
    if text.startswith("last:"):
        count = text[len("last:") :].strip()
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"train_layers={spec!r}: 'last:' takes a positive count of blocks, e.g. 'last:2'")
        if int(count) > num_blocks:
            raise ConfigError(f"train_layers={spec!r} asks for {count} blocks but {valid}")
        return list(range(num_blocks - int(count), num_blocks))
    try:
        layers = parse_int_set(text)
    except ConfigError as err:
        raise ConfigError(f"train_layers: {err}; or 'last:<count>' for the top blocks") from None
    absent = [i for i in layers if i >= num_blocks]
    if absent:
        raise ConfigError(
            f"train_layers={spec!r} names block(s) {absent} but {valid}; 'last:<count>' counts from the top"
        )
    return layers
