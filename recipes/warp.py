"""WaRP: learn safety in a rotated basis, then fine-tune for utility with the important coefficients frozen.

    accelerate launch --config_file accelerate_configs/cpu.yaml \
        recipes/warp.py recipes/configs/warp_minilm.json [phase=2] [key=value ...]

"phase" picks 1 (basis), 2 (safety + importance + masks), 3 (masked utility fine-tune), "plain"
(the unmasked baseline), "eval" (held-out table) or "all". See hf_ext/warp/layout.py for the run layout.
"""

import sys

from hf_ext import (
    DataArguments,
    HfExtTrainingArguments,
    ModelArguments,
    WarpArguments,
    exit_on_user_error,
    parse_config,
    print_start_plan,
    run_warp_study,
)
from hf_ext.warp import WarpRun

ARGUMENT_TYPES = (ModelArguments, DataArguments, WarpArguments, HfExtTrainingArguments)


def main(argv=None):
    args = parse_config(ARGUMENT_TYPES, argv, recipe=__file__)
    print_start_plan("hf_ext.warp.plan", args)  # refuses a launcher WaRP cannot run under, before loading anything
    return run_warp_study(WarpRun.build(*args))


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
