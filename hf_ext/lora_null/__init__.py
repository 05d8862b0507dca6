"""LoRA-Null: peft LoRA adapters initialised in the null space of each layer's inputs, verification, study."""
