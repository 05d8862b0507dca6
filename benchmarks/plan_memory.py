"""Peak memory against ``hf-ext plan`` on the CPU: each stage of a config runs alone in a fresh process (two
training steps on full-length batches of the config's size, as the recipe's stage holds them), and its peak
resident set above the process's resident set before the model is built (VmHWM - VmRSS, benchmarks/machine.py) is
compared with the plan's total for that stage (static items plus the estimates). A tiny model of the same architecture
trains one step first, so that code, kernels and thread pools are loaded before the baseline; the model trains in
train mode, as under the Trainer; glibc's allocator is held to a fixed mmap threshold (see ALLOCATOR). The target:
within 15%.

python benchmarks/plan_memory.py            # every stage, one process each
python benchmarks/plan_memory.py --stage warp_minilm.json:plain   # one stage, prints its JSON line
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import processor, reset_peak, status_kib  # noqa: E402

STAGES = [
    "warp_minilm.json:phase 1",
    "warp_minilm.json:phase 2",
    "warp_minilm.json:phase 3",
    "warp_minilm.json:plain",
    "warp_minilm.json:full",
    "warp_tiny_llama.json:phase 2",
    "warp_tiny_llama.json:phase 3",
    "lora_null_minilm_topic.json:training",
    "seq_cls_minilm_lora_last2.json:training",
]
TOLERANCE = 0.15
# glibc serves a freed block's size from its heap from then on (its mmap threshold rises to it) and keeps freed heap
# memory: the resident peak would then measure the allocator's high-water mark, run to run different by up to 40%,
# not the tensors' (a GPU's caching allocator keeps its own reserve, which no plan counts). A fixed threshold puts
# every tensor over 128 KiB in its own mapping, returned when freed, so the resident set follows the live tensors.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _args(config: str):
    """The plan module of the recipe whose arguments ``config`` parses as, and the parsed arguments."""
    import importlib

    from hf_ext.errors import ConfigError
    from hf_ext.parsing import parse_config
    from hf_ext.plan import RECIPES

    for module_name in RECIPES.values():
        module = importlib.import_module(module_name)
        try:
            args = parse_config(module.ARGUMENT_TYPES, [str(ROOT / "recipes" / "configs" / config), "use_cpu=true"])
        except ConfigError:
            continue
        return module, args
    raise SystemExit(f"{config}: no recipe parses it")


def _labels(module, args):
    if args[0].task_type != "seq_cls":
        return None
    return ["safety:a", "safety:b", "utility:a", "utility:b"] if module.__name__.endswith("warp.plan") else None


def _batch(tokenizer, size: int, length: int, labels: list[str] | None):
    """``size`` examples of ``length`` tokens (no padding); class labels, or the tokens themselves for a causal LM."""
    texts = ["word " * length] * size
    batch = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"))
    batch["labels"] = torch.arange(size) % len(labels) if labels else batch["input_ids"].clone()
    return batch


def measure(spec: str) -> dict:
    from hf_ext.models import load_model, load_tokenizer
    from hf_ext.plan import label_names

    config, stage_name = spec.split(":")
    module, args = _args(config)
    model_args, data_args, technique, training_args = args
    labels = _labels(module, args) or label_names(data_args, model_args.task_type)
    if (
        stage_name == "phase 3"
    ):  # the arm this stage runs: the config's keep_ratio and layout (the plan keeps the largest)
        args = (
            args[0],
            args[1],
            dataclasses.replace(technique, keep_ratios=[technique.keep_ratio], mask_layouts=None),
            args[3],
        )
    plan = module.plan(args, launcher="ddp", num_processes=1)
    stage = next(s for s in plan.stages if s.name == stage_name)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    size = (
        training_args.per_device_eval_batch_size
        if stage_name == "phase 1"
        else training_args.per_device_train_batch_size
    )
    batch = _batch(tokenizer, size, data_args.max_seq_length, labels)
    _warm_up(model_args)
    how = reset_peak()
    before = status_kib()["VmRSS"]
    model = load_model(model_args, tokenizer, labels)
    model.train(stage_name != "phase 1")  # as the Trainer trains (dropout); phase 1 reads statistics in eval mode
    if stage_name == "training":
        run = _lora_null if module.__name__.endswith("lora_null.plan") else _selective
    else:
        run = _STAGES[stage_name]
    run(model, technique, batch)
    peak = status_kib()["VmHWM"] - before
    return {"stage": spec, "planned_mib": stage.total / 2**20, "measured_mib": peak / 1024, "peak": how}


def _warm_up(model_args) -> None:
    """One training step of a tiny model of the same architecture and task, so that the model code, kernels and
    thread pools are loaded before the baseline (their one-time cost is not the stage's memory)."""
    import gc

    from hf_ext.models import TINY_ARCHITECTURES, tiny_model
    from hf_ext.plan import local_tokenizer, meta_model

    architecture = meta_model(model_args, local_tokenizer(model_args), ["a", "b"]).config.model_type
    if architecture not in TINY_ARCHITECTURES:
        return
    model, tokenizer = tiny_model(architecture, model_args.task_type)
    batch = _batch(tokenizer, 2, 8, None if model_args.task_type == "causal_lm" else ["a", "b"])
    _train(model, list(model.parameters()), batch)
    del model
    gc.collect()


def _train(model, params, batch, *, before_step=(), after_step=()):
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    for _ in range(2):
        model(**batch).loss.backward()
        for hook in before_step:
            hook()
        optimizer.step()
        for hook in after_step:
            hook()
        optimizer.zero_grad()


def _warp_targets(model, warp):
    from hf_ext.targets import select_linear

    model.requires_grad_(False)
    targets = select_linear(model, warp.targets, layers=warp.layers)
    generator = torch.Generator().manual_seed(0)
    bases = {
        n: torch.linalg.qr(torch.randn(m.in_features, m.in_features, generator=generator))[0]
        for n, m in targets.items()
    }
    return targets, bases


def _phase1(model, warp, batch):
    from hf_ext.activations import compute_bases
    from hf_ext.targets import select_linear

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    compute_bases(model, select_linear(model, warp.targets, layers=warp.layers), [inputs, inputs], progress=False)


def _phase2(model, warp, batch):
    from hf_ext.warp.importance import make_accumulator
    from hf_ext.warp.reparam import coefficient_parameters, reparameterize

    _, bases = _warp_targets(model, warp)
    modules = reparameterize(model, bases, rank=warp.basis_rank)
    params = list(coefficient_parameters(modules).values())
    for p in params:
        p.requires_grad_(True)
    accumulator = make_accumulator(
        modules, kind=warp.importance, granularity=warp.importance_granularity, statistic=warp.importance_statistic
    )
    _train(model, params, batch, before_step=[accumulator.update])


def _phase3(model, warp, batch):
    from hf_ext.warp.arms import layout_masks
    from hf_ext.warp.leaf import LeafReparameterization
    from hf_ext.warp.masking import MaskedUpdate

    targets, bases = _warp_targets(model, warp)
    rank = {n: warp.basis_rank or m.in_features for n, m in targets.items()}
    layout = f"{warp.granularity}/{warp.threshold}"
    shape = {n: (m.out_features, rank[n]) for n, m in targets.items()}
    scores = {n: torch.rand(s if layout.startswith("element") else s[1:]) for n, s in shape.items()}
    masks, _ = layout_masks(scores, warp.keep_ratio, layout)
    leaf = LeafReparameterization(model, bases, rank=warp.basis_rank, masks=masks)
    masked = MaskedUpdate(leaf.coefficients, masks)
    _train(
        model,
        list(leaf.coefficients.values()),
        batch,
        before_step=[leaf.project_grads_, masked.zero_frozen_grads_],
        after_step=[masked.restore_, leaf.form_weights_],
    )


def _plain(model, warp, batch):
    targets, _ = _warp_targets(model, warp)
    weights = [m.weight for m in targets.values()]
    for w in weights:
        w.requires_grad_(True)
    _train(model, weights, batch)


def _full(model, warp, batch):
    _train(model, list(model.parameters()), batch)


def _lora_null(model, args, batch):
    from peft import get_peft_model

    from hf_ext.lora_null.init import lora_layers

    model = get_peft_model(model, args.lora_config("seq_cls"))
    for layer in lora_layers(model).values():
        layer.lora_A["default"].weight.requires_grad_(False)
    _train(model, [p for p in model.parameters() if p.requires_grad], batch)


def _selective(model, selective, batch):
    from hf_ext.selective.selection import select_trainable

    model, _ = select_trainable(model, selective, "seq_cls")
    _train(model, [p for p in model.parameters() if p.requires_grad], batch)


_STAGES = {
    "phase 1": _phase1,
    "phase 2": _phase2,
    "phase 3": _phase3,
    "plain": _plain,
    "full": _full,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", help="CONFIG:STAGE, run in this process")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per stage; the median is reported")
    options = parser.parse_args()
    if options.stage:
        print(json.dumps(measure(options.stage)))
        return 0
    rows = []
    for spec in STAGES:
        runs = []
        for _ in range(options.repeats):
            command = [sys.executable, __file__, "--stage", spec]
            env = {**os.environ, "OMP_NUM_THREADS": "1", **ALLOCATOR}
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            if result.returncode:
                print(f"{spec}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                return 1
            runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
        measured = sorted(run["measured_mib"] for run in runs)
        rows.append(runs[0] | {"measured_mib": measured[len(measured) // 2], "range": (measured[0], measured[-1])})
    machine = f"{processor()}, torch {torch.__version__}"
    print(f"peak resident set above the pre-model baseline against hf-ext plan ({machine})")
    print(f"| config: stage | planned MiB | measured MiB, median of {options.repeats} [range] | measured / planned |")
    print("| --- | --- | --- | --- |")
    worst = 0.0
    for row in rows:
        ratio = row["measured_mib"] / row["planned_mib"]
        worst = max(worst, abs(ratio - 1))
        low, high = row["range"]
        measured = f"{row['measured_mib']:.1f} [{low:.1f}, {high:.1f}]"
        print(f"| {row['stage']} | {row['planned_mib']:.1f} | {measured} | {ratio:.3f} |")
    print(f"largest deviation {worst:.1%} (target {TOLERANCE:.0%}); {rows[0]['peak']}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
