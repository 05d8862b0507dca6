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
    run_drift_study,
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, DriftArguments, HfExtTrainingArguments)


def main(argv=None):
    return run_drift_study(*parse_config(ARGUMENT_TYPES, argv, recipe=__file__))


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
