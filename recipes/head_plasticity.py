"""Head plasticity: per-head importance before and after a full fine-tune, per-head update size, and
the statistics and figures that relate them (see hf_ext/heads/study.py for the files written).

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/head_plasticity.py recipes/configs/head_plasticity_minilm_rotten_tomatoes.json [key=value ...]

Redo the analysis from the saved files without the model: hf-ext heads aggregate|plot --run DIR
Pruning curve of a saved model: hf-ext heads prune-curve CONFIG --model DIR/seed-<s>/initial
"""

import sys

from hf_ext import (
    DataArguments,
    HeadStudyArguments,
    HfExtTrainingArguments,
    ModelArguments,
    exit_on_user_error,
    parse_config,
    print_start_plan,
    run_head_study,
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, HeadStudyArguments, HfExtTrainingArguments)


def main(argv=None):
    args = parse_config(ARGUMENT_TYPES, argv, recipe=__file__)
    print_start_plan("hf_ext.heads.plan", args)  # refuses a launcher the study cannot run under, before loading
    return run_head_study(*args)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
