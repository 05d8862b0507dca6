"""Representational drift: fine-tune one model by full fine-tuning and by LoRA for several seeds, measure
per-layer CKA and cosine against the base model, test whether LoRA drifts less, plot it beside the task
metric (see hf_ext/drift/study.py for the files written).

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/drift.py recipes/configs/drift_minilm_sentiment.json [key=value ...]

Redo the analysis from the saved dumps: hf-ext drift analyze|plot --run DIR
"""

import sys

from hf_ext import (
    DataArguments,
    DriftArguments,
    HfExtTrainingArguments,
    ModelArguments,
    exit_on_user_error,
    parse_config,
    print_start_plan,
    run_drift_study,
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, DriftArguments, HfExtTrainingArguments)


def main(argv=None):
    args = parse_config(ARGUMENT_TYPES, argv, recipe=__file__)
    print_start_plan("hf_ext.drift.plan", args)  # refuses a launcher the study cannot run under, before loading
    return run_drift_study(*args)


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
