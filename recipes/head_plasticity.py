"""Head plasticity: per-head importance before and after a full fine-tune, per-head update size, and
the statistics and figures that relate them (see hf_ext/head_study.py for the files written).

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/head_plasticity.py recipes/configs/head_plasticity_minilm_topic.json [key=value ...]

Redo the analysis from the saved JSONL files without the model: hf-ext heads aggregate|plot --run DIR
"""

from transformers import TrainingArguments

from hf_ext import DataArguments, ModelArguments, parse_config
from hf_ext.head_study import HeadStudyArguments, run_study


def main(argv=None):
    model_args, data_args, study_args, training_args = parse_config(
        (ModelArguments, DataArguments, HeadStudyArguments, TrainingArguments), argv
    )
    return run_study(model_args, data_args, study_args, training_args)


if __name__ == "__main__":
    main()
