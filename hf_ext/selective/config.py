"""``SelectiveArguments``: which blocks and modules train, and how (full or LoRA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import LoraShapeArguments, check_bounds


@dataclass
class SelectiveArguments(LoraShapeArguments):
    """Train only some transformer blocks (and modules inside them); the blocks below run without autograd."""

    train_layers: str | None = field(
        default=None,
        metadata={
            "help": "Blocks that train: 'last:4' (the last four), '16-19', '0,2,5-7'; null: every block. Blocks "
            "below the first one run under torch.no_grad() with their output detached."
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
