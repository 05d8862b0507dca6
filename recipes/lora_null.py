"""LoRA-Null: a peft LoRA adapter initialised in the null space of each target layer's inputs, verified
at init, trained, verified again and compared (see hf_ext/lora_null/study.py for the files written).

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/lora_null.py recipes/configs/lora_null_minilm_topic.json [key=value ...]

Check a saved adapter later: hf-ext lora-null verify --model BASE --adapter DIR --data builtin:topic
"""

import sys

from hf_ext import (
    DataArguments,
    HfExtTrainingArguments,
    LoraNullArguments,
    ModelArguments,
    exit_on_user_error,
    parse_config,
    run_lora_null,
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, LoraNullArguments, HfExtTrainingArguments)


def main(argv=None):
    return run_lora_null(*parse_config(ARGUMENT_TYPES, argv))


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
