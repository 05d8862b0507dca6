"""Does LoRA-Null preserve more than plain LoRA? Plain LoRA, LoRA-Null in both modes and CorDA-KPM, same
rank, targets and steps, each over its own learning-rate grid and several seeds, compared at matched task
loss: preservation on texts disjoint from calibration and task data (a frozen base-model probe's log-loss,
the Spearman of the pairwise cosine matrices, nearest-neighbour overlap; see hf_ext/lora_null/preservation.py).

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/lora_null_preservation.py recipes/configs/lora_null_preservation_minilm.json [key=value ...]
"""

import sys

from hf_ext import (
    DataArguments,
    HfExtTrainingArguments,
    LoraNullArguments,
    ModelArguments,
    PreservationArguments,
    exit_on_user_error,
    parse_config,
    print_start_plan,
    run_preservation_study,
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, LoraNullArguments, PreservationArguments, HfExtTrainingArguments)


def main(argv=None):
    model_args, data_args, args, study, training_args = parse_config(ARGUMENT_TYPES, argv, recipe=__file__)
    print_start_plan("hf_ext.lora_null.preservation_plan", (model_args, data_args, args, study, training_args))
    return run_preservation_study(model_args, data_args, args, study, training_args)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
