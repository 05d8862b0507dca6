"""Fine-tune a model on one task with HfExtTrainer: the plainest recipe and the template for the others.

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/finetune.py recipes/configs/finetune_minilm_sentiment.json [key=value ...]
"""

import sys

from hf_ext import (
    DataArguments,
    HfExtTrainer,
    HfExtTrainingArguments,
    ModelArguments,
    exit_on_user_error,
    load_model_and_data,
    parse_config,
    print_start_plan,
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, HfExtTrainingArguments)


def main(argv=None):
    model_args, data_args, training_args = parse_config(ARGUMENT_TYPES, argv, recipe=__file__)
    print_start_plan("hf_ext.finetune_plan", (model_args, data_args, training_args))
    training_args.check_output_dir(finished=["config.json", "train_results.json"])
    tokenizer, data, model = load_model_and_data(model_args, data_args, seed=training_args.seed)
    trainer = HfExtTrainer(model=model, args=training_args, processing_class=tokenizer, **data.trainer_kwargs())
    trainer.train_and_report({"eval": data.validation, "test": data.test}, training_args.resume_from_checkpoint)
    return trainer


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
