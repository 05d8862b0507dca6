"""LoRA-Null preprocessing against peft's data-aware LoRA initialisations (CorDA-KPM and EVA) on the embedded MiniLM.

On the same model and the same calibration texts (default 128 texts of the builtin topic train split, max
length 64), each variant starts from a freshly loaded model:

1. ours: ``get_peft_model`` then ``initialize_lora_null_weights`` (default mode ``null_frozen_A``) over padded
   batches (default 32 texts).
2. CorDA-KPM: ``preprocess_corda`` (``CordaConfig(corda_method="kpm")``) with a ``run_model`` that runs the same
   texts one at a time (CorDA's hook drops the batch dimension, so it needs batch size 1), then
   ``get_peft_model``.
3. EVA: ``get_peft_model`` with ``init_lora_weights="eva"`` (``EvaConfig(rho=1.0)``: no rank redistribution),
   then ``initialize_lora_eva_weights`` over the same padded batches (padding excluded by peft's default
   attention-mask input preparation). EVA cycles the batches until its incremental PCA converges, so it may run
   more forward passes than there are batches; the count is printed.
4. plain: a ``torch.no_grad()`` forward over the same batches (the calibration-overhead baseline).

Reported: wall seconds (best of ``--repeats``; the variants are interleaved within each repeat, each run in a
fresh subprocess) and peak memory: the peak resident set size during the variant minus the resident set size
after loading the model and data and one warm-up forward in that subprocess (the kernel's peak, VmHWM, is reset
through /proc/self/clear_refs just before; the largest over repeats is shown). Then the overhead of our
calibration over a plain forward (ours / plain; large is fine, it runs once) and the subspace overlap of our
``lora_A`` rows with CorDA's and EVA's per layer, ``||Q_ours^T Q_theirs||_F^2 / r`` with ``Q`` orthonormal bases
of the row spaces (1: same subspace, 0: orthogonal; a random pair scores ``r / d_in`` on average). CorDA-KPM
also targets small-eigenvalue (knowledge-preserving) directions of its input covariance, so its overlap is the
interesting number; EVA takes the top principal components, which ours excludes by construction, so its
overlap should be near 0.

Target: ours not slower than CorDA-KPM (time ratio CorDA / ours >= 1).

    python benchmarks/lora_null.py [--examples 128] [--batch-size 32] [--max-length 64] [--rank 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import (  # benchmarks/machine.py (the script directory is on sys.path)
    CpuShare,
    processor,
    reset_peak,
    status_kib,
)
from safetensors.torch import load_file, save_file

VARIANTS = ("plain", "ours", "corda", "eva")
LABELS = {
    "plain": "plain forward (no_grad)",
    "ours": "ours: LoRA-Null",
    "corda": "peft CorDA-KPM (batch 1)",
    "eva": "peft EVA (rho 1.0)",
}
DEFAULT_TARGETS = ["query", "value", "attention.output.dense", "intermediate.dense"]


def _lora_a(peft_model) -> dict[str, torch.Tensor]:
    from hf_ext.lora_null.init import lora_layers

    return {
        name: layer.lora_A["default"].weight.detach().double().clone()
        for name, layer in lora_layers(peft_model).items()
    }


def _child(args) -> None:
    # every import before the timed block
    from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    from hf_ext.config import ModelArguments
    from hf_ext.lora_null.init import initialize_lora_null_weights
    from hf_ext.models import load_model, load_tokenizer
    from hf_ext.texts import load_texts, text_batches

    torch.manual_seed(0)
    model_args = ModelArguments(model_name_or_path="embedded:minilm")
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    _, texts = load_texts(args.data, split="train", limit=args.examples)
    # plain dicts: peft's EVA input preparation rejects a BatchEncoding (not a dict subclass)
    batches = [dict(b) for b in text_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length)]
    singles = [dict(tokenizer(t, truncation=True, max_length=args.max_length, return_tensors="pt")) for t in texts]
    model = load_model(model_args, tokenizer, ["a", "b"]).eval()
    with torch.no_grad():
        model(**batches[0])  # warm-up, same for every variant
    extra: dict = {"tokens": sum(int(b["attention_mask"].sum()) for b in batches)}
    gc.collect()
    method = reset_peak()
    before = status_kib()["VmRSS"]
    with CpuShare() as share:
        start = time.perf_counter()
        if args.variant == "plain":
            with torch.no_grad():
                for batch in batches:
                    model(**batch)
            result = None
        elif args.variant == "ours":
            result = get_peft_model(model, LoraConfig(r=args.rank, target_modules=args.targets, task_type="SEQ_CLS"))
            initialize_lora_null_weights(result, batches, mode=args.mode, progress=False)
        elif args.variant == "corda":
            config = LoraConfig(
                r=args.rank,
                target_modules=args.targets,
                task_type="SEQ_CLS",
                init_lora_weights="corda",
                corda_config=CordaConfig(corda_method="kpm"),
            )

            @torch.no_grad()
            def run_model():
                for inputs in singles:
                    model(**inputs)

            preprocess_corda(model, config, run_model=run_model)
            result = get_peft_model(model, config)
            extra["forward_passes"] = len(singles)
        else:
            config = LoraConfig(
                r=args.rank,
                target_modules=args.targets,
                task_type="SEQ_CLS",
                init_lora_weights="eva",
                eva_config=EvaConfig(rho=1.0),
            )
            result = get_peft_model(model, config)
            calls = [0]

            def forward(m, inputs):
                calls[0] += 1
                return m(**inputs)

            initialize_lora_eva_weights(result, batches, forward_fn=forward, show_progress_bar=False)
            extra["forward_passes"] = calls[0]
        seconds = time.perf_counter() - start
    status = status_kib()
    extra.update(seconds=seconds, peak_kib=status["VmHWM"] - before, base_kib=before, share=share.share, method=method)
    if args.save and result is not None:
        save_file({k: v.contiguous() for k, v in _lora_a(result).items()}, args.save)
    Path(args.out).write_text(json.dumps(extra))


def _run_child(args, variant: str, out: Path, save: Path | None) -> tuple[dict, str]:
    command = [sys.executable, __file__, "--variant", variant, "--out", str(out)]
    command += ["--examples", str(args.examples), "--batch-size", str(args.batch_size)]
    command += ["--max-length", str(args.max_length), "--rank", str(args.rank), "--mode", args.mode]
    command += ["--data", args.data, "--targets", *args.targets]
    if save is not None:
        command += ["--save", str(save)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.child_timeout)
    if done.returncode != 0:
        sys.exit(f"variant {variant} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text()), done.stderr


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    qa, qb = torch.linalg.qr(a.T).Q, torch.linalg.qr(b.T).Q
    return float((qa.T @ qb).pow(2).sum()) / min(qa.shape[1], qb.shape[1])


def _target_of(name: str, targets: list[str]) -> str:
    return max((t for t in targets if name.endswith("." + t)), key=len, default="?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mode", default="null_frozen_A", choices=["null_frozen_A", "null_projection"])
    parser.add_argument("--data", default="builtin:topic")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=DEFAULT_TARGETS,
        help="peft target_modules (default: every d_in=384 linear except key; the pooler's single token breaks CorDA)",
    )
    parser.add_argument("--child-timeout", type=int, default=150, help="seconds allowed to one variant run")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _child(args)
        return

    print(
        f"machine: {processor()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    warnings: dict[str, set[str]] = {v: set() for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in VARIANTS:
                save = Path(tmp) / f"{variant}.safetensors" if repeat == 0 and variant != "plain" else None
                result, stderr = _run_child(args, variant, Path(tmp) / f"{variant}-{repeat}.json", save)
                runs[variant].append(result)
                warnings[variant] |= {
                    line.strip()
                    for line in stderr.splitlines()
                    if "Warning:" in line or "calibration saw" in line or "skipping SVD" in line
                }
        bases = {v: load_file(str(Path(tmp) / f"{v}.safetensors")) for v in ("ours", "corda", "eva")}

    first = runs["plain"][0]
    print(
        f"calibration: {args.examples} texts of {args.data} (train), max length {args.max_length}, "
        f"{first['tokens']} tokens; ours, EVA and plain in batches of {args.batch_size}; CorDA at batch size 1 "
        f"({runs['corda'][0]['forward_passes']} forward passes: its hook drops the batch dimension); EVA ran "
        f"{runs['eva'][0]['forward_passes']} forward passes (it cycles the batches until its PCA converges)"
    )
    print(
        f"LoRA: r={args.rank}, targets {' '.join(args.targets)} ({len(bases['ours'])} layers), ours mode {args.mode}"
    )
    seconds = {v: min(r["seconds"] for r in runs[v]) for v in VARIANTS}
    memory = {v: max(r["peak_kib"] for r in runs[v]) * 1024 / 1e6 for v in VARIANTS}
    shares = [r["share"] for v in VARIANTS for r in runs[v]]
    print(
        f"CPU share {min(shares):.2f} (lowest over the {len(shares)} timed runs; mean {sum(shares) / len(shares):.2f})"
    )
    print(
        f"peak memory: per variant subprocess, peak RSS during the variant minus RSS after loading model and data "
        f"(~{first['base_kib'] * 1024 / 1e6:.0f} MB); {first['method']}; MB = 10^6 bytes; largest over repeats"
    )

    print("\n| variant | seconds | ratio to ours | peak memory MB | ratio to ours |\n| --- | --- | --- | --- | --- |")
    for v in VARIANTS:
        print(
            f"| {LABELS[v]} | {seconds[v]:.3f} | {seconds[v] / seconds['ours']:.2f} | {memory[v]:.1f} | "
            f"{memory[v] / memory['ours']:.2f} |"
        )
    met = "met" if seconds["ours"] <= seconds["corda"] else "NOT met"
    print(f"\ntarget: ours not slower than CorDA-KPM: CorDA / ours = {seconds['corda'] / seconds['ours']:.2f} ({met})")
    print(f"calibration overhead: ours / plain forward = {seconds['ours'] / seconds['plain']:.2f}")
    print(
        "all repeats (s): " + "; ".join(f"{v} " + ", ".join(f"{r['seconds']:.3f}" for r in runs[v]) for v in VARIANTS)
    )

    print("\nsubspace overlap of our lora_A rows with theirs, ||Q_ours^T Q_theirs||_F^2 / r (1 same, 0 orthogonal):")
    print("| compared with | layers | mean | min | max | chance r/d_in |\n| --- | --- | --- | --- | --- | --- |")
    for other, label in (("corda", "CorDA-KPM"), ("eva", "EVA")):
        groups: dict[str, list[tuple[float, float]]] = {}
        for name, ours in bases["ours"].items():
            theirs = bases[other][name]
            value = _overlap(ours, theirs)
            chance = min(ours.shape[0], theirs.shape[0]) / ours.shape[1]
            groups.setdefault(_target_of(name, args.targets), []).append((value, chance))
        groups["all"] = [pair for values in groups.values() for pair in values]
        for group, values in groups.items():
            overlaps = [v for v, _ in values]
            chances = sorted({round(c, 4) for _, c in values})
            print(
                f"| {label}, {group} | {len(values)} | {sum(overlaps) / len(overlaps):.3f} | {min(overlaps):.3f} | "
                f"{max(overlaps):.3f} | {', '.join(f'{c:.4f}' for c in chances)} |"
            )
    print(
        "(ours vs the r largest eigenvectors is ~0 by construction; CorDA-KPM also aims at small-eigenvalue, "
        "knowledge-preserving directions, so its overlap is the informative one)"
    )
    for v in VARIANTS:
        for line in sorted(warnings[v]):
            print(f"warning from {v}: {line[:300]}")


if __name__ == "__main__":
    main()
