"""GPU check of the support matrix's FSDP2 column, through ``accelerate launch`` (needs 2 CUDA devices; CI and the
CPU machines have none: accelerate enables FSDP only on GPUs, so the CPU tests shard with ``fully_shard`` on gloo
without the Trainer, tests/scripts/selective_fsdp2.py).

1. Selective training (recipes/seq_cls.py, last block of a tiny Qwen2) under accelerate_configs/fsdp2.yaml and,
   as the baseline, multi_gpu.yaml (DDP), 2 processes each, same global batch: prints both test losses and their
   ratio (FSDP2 / DDP; 1 within bf16 rounding if sharding changes nothing).
2. Each recipe whose callbacks read whole weights (drift, LoRA-Null, head study) under fsdp2.yaml: must exit 2
   with the one-line "cannot run under FSDP" error before it trains.

python benchmarks/sharded_launchers.py [--out runs/sharded_launchers]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["max_train_samples=256", "max_eval_samples=64", "max_steps=20", "warmup_steps=0", "report_to=[]"]
REFUSED = {
    "drift": ("drift_minilm_sentiment.json", ["model_name_or_path=tiny:bert", "seeds=[1]", "eval_subset_size=16"]),
    "lora_null": ("lora_null_minilm_topic.json", ["model_name_or_path=tiny:bert", 'lora_target_modules=["query"]']),
    "head_plasticity": ("head_plasticity_minilm_rotten_tomatoes.json", ["model_name_or_path=tiny:bert", "top_k=3"]),
}


def launch(accelerate_config: str, recipe: str, config: str, out: Path, *overrides: str):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config]
    command += [
        "--num_processes",
        "2",
        str(ROOT / "recipes" / f"{recipe}.py"),
        str(ROOT / "recipes" / "configs" / config),
    ]
    return subprocess.run([*command, f"output_dir={out}", *overrides], capture_output=True, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "sharded_launchers")
    out = parser.parse_args().out
    if torch.cuda.device_count() < 2:
        print(f"needs 2 CUDA devices, found {torch.cuda.device_count()}: run it on a GPU machine", file=sys.stderr)
        return 1
    losses = {}
    for name in ("multi_gpu", "fsdp2"):
        config = str(ROOT / "accelerate_configs" / f"{name}.yaml")
        run = out / name
        result = launch(
            config, "seq_cls", "seq_cls_tiny_qwen2_last_block.json", run, *TINY, "overwrite_output_dir=true"
        )
        if result.returncode:
            print(f"{name}: failed\n{result.stderr[-3000:]}", file=sys.stderr)
            return 1
        losses[name] = json.loads((run / "test_results.json").read_text())["test_loss"]
    print(
        f"selective, test loss: DDP {losses['multi_gpu']:.5f}, FSDP2 {losses['fsdp2']:.5f}, "
        f"ratio FSDP2/DDP {losses['fsdp2'] / losses['multi_gpu']:.5f}"
    )
    failures = 0
    for recipe, (config, overrides) in REFUSED.items():
        result = launch(
            str(ROOT / "accelerate_configs" / "fsdp2.yaml"), recipe, config, out / recipe, *TINY, *overrides
        )
        refused = result.returncode == 2 and "cannot run under FSDP" in result.stderr
        failures += not refused
        print(f"{recipe} under FSDP2: {'refused with the one-line error' if refused else 'NOT refused'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
