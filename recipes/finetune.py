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
    load_model,
    load_tokenizer,
    parse_config,
    prepare_data,
)
from hf_ext.outputs import check_output_dir
from hf_ext.run_logger import print_run_locations

ARGUMENT_TYPES = (ModelArguments, DataArguments, HfExtTrainingArguments)


def main(argv=None):
    model_args, data_args, training_args = parse_config(ARGUMENT_TYPES, argv)
    check_output_dir(
        training_args.output_dir,
        finished=["config.json", "train_results.json"],
        overwrite=training_args.overwrite_output_dir,
        resuming=bool(training_args.resume_from_checkpoint),
    )
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    data = prepare_data(data_args, tokenizer, model_args.task_type)
    model = load_model(model_args, tokenizer, data.labels, seed=training_args.seed)
    trainer = HfExtTrainer(model=model, args=training_args, processing_class=tokenizer, **data.trainer_kwargs())
    trainer.train_and_report({"eval": data.validation, "test": data.test}, training_args.resume_from_checkpoint)
    print_run_locations(trainer)
    return trainer


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
