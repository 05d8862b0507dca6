"""LoRA-Null: a peft LoRA adapter initialised in the null space of each target layer's inputs, verified
at init, trained, verified again and compared (files: adapter_init/, adapter/, verify_init.json,
verify_trained.json, metrics.json in output_dir).

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/lora_null.py recipes/configs/lora_null_minilm_topic.json [key=value ...]

Check a saved adapter later: hf-ext lora-null verify --model BASE --adapter DIR --data builtin:topic
"""

import sys

from peft import get_peft_model

from hf_ext import (
    DataArguments,
    HfExtTrainer,
    HfExtTrainingArguments,
    LoraNullArguments,
    LoraNullCallback,
    ModelArguments,
    exit_on_user_error,
    parse_config,
    print_start_plan,
)
from hf_ext.lora_null import (
    calibration_batches,
    initialize_lora_null_weights,
    prepare_run,
    report_lora_null,
    save_initial_adapter,
    verification_batches,
)

ARGUMENT_TYPES = (ModelArguments, DataArguments, LoraNullArguments, HfExtTrainingArguments)


def main(argv=None):
    model_args, data_args, args, training_args = parse_config(ARGUMENT_TYPES, argv, recipe=__file__)
    print_start_plan("hf_ext.lora_null.plan", (model_args, data_args, args, training_args))
    root, tokenizer, data, model = prepare_run(model_args, data_args, args, training_args, "verify_trained.json")
    model = get_peft_model(model, args.lora_config(model_args.task_type)).to(training_args.device)
    calibration = calibration_batches(args, data_args, tokenizer, data)
    options = {"mode": args.mode, "freeze_A": args.freeze_A, "memory_gb": args.calib_memory_gb}
    init = initialize_lora_null_weights(model, calibration, **options, progress=training_args.process_index == 0)
    save_initial_adapter(model, init, root)
    verify = LoraNullCallback(
        verification_batches(data, args.verify_samples),
        init=init.to_dict(),
        frozen_A=init.freeze_A,
        max_activation_samples=args.max_activation_samples,
    )
    trainer = HfExtTrainer(
        model=model, args=training_args, processing_class=tokenizer, callbacks=[verify], **data.trainer_kwargs()
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    report_lora_null(trainer, verify, init, root)
    return root


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
