"""Sequence classification with selective-layer training: only the chosen blocks train (fully or with
LoRA), the blocks below them run without autograd; accuracy and macro-F1 on validation and test.

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/seq_cls.py recipes/configs/seq_cls_minilm_lora_last2.json [key=value ...]

See what one batch records per block: hf-ext selective inspect recipes/configs/seq_cls_minilm_lora_last2.json
"""

import sys

from hf_ext import (
    DataArguments,
    HfExtTrainer,
    HfExtTrainingArguments,
    ModelArguments,
    SelectiveArguments,
    exit_on_user_error,
    parse_config,
    print_start_plan,
)
from hf_ext.selective import prepare_seq_cls, record_selection

ARGUMENT_TYPES = (ModelArguments, DataArguments, SelectiveArguments, HfExtTrainingArguments)


def main(argv=None):
    model_args, data_args, selective, training_args = parse_config(ARGUMENT_TYPES, argv, recipe=__file__)
    print_start_plan("hf_ext.selective.plan", (model_args, data_args, selective, training_args))
    training_args.check_output_dir(finished=["train_results.json"])
    model, tokenizer, data, selection = prepare_seq_cls(model_args, data_args, selective, training_args.seed)
    record_selection(training_args, model, selection, data.labels)
    trainer = HfExtTrainer(model=model, args=training_args, processing_class=tokenizer, **data.trainer_kwargs())
    if not training_args.resume_from_checkpoint:  # the control: the same classifier before any step
        trainer.save_metrics("init", trainer.evaluate(data.validation, metric_key_prefix="init"))
    trainer.train_and_report({"eval": data.validation, "test": data.test}, training_args.resume_from_checkpoint)
    trainer.end_tracking()
    return trainer


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
