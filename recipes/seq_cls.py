"""Sequence classification with selective-layer training: only the chosen blocks train (fully or with
LoRA), the blocks below them run without autograd; accuracy and macro-F1 on validation and test.

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/seq_cls.py recipes/configs/seq_cls_minilm_lora_last2.json [key=value ...]

See what one batch records per block: hf-ext selective inspect recipes/configs/seq_cls_minilm_lora_last2.json
"""

import sys

from hf_ext import exit_on_user_error, parse_config
from hf_ext.selective.study import SEQ_CLS_ARGUMENT_TYPES, run_seq_cls

ARGUMENT_TYPES = SEQ_CLS_ARGUMENT_TYPES


def main(argv=None):
    return run_seq_cls(*parse_config(ARGUMENT_TYPES, argv))


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
