"""Phase-1 bases of q/k/v and gate/up, which receive the same input tensor: statistics and decomposition once per
shared input (hf_ext) against once per module (the baseline: the same code with sharing detection switched off,
so every module accumulates and decomposes its own copy of the same statistics).

A random Llama built from a config (no download): ``--hidden`` wide, ``--layers`` blocks, targets
q_proj/k_proj/v_proj/gate_proj/up_proj of every block; batches of random token ids. Both variants run on the
same model and batches, alternating, best of ``--repeats``; the bases are compared for equality.

    python benchmarks/shared_inputs.py [--hidden 512] [--layers 4] [--batches 8]
"""

from __future__ import annotations

import argparse
import platform
import time
from unittest import mock

import torch
from machine import CpuShare, processor  # benchmarks/machine.py (the script directory is on sys.path)
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.activations import InputRecorder, compute_bases, statistics_bytes
from hf_ext.targets import select_linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=1000,
    )
    model = LlamaForCausalLM(config).eval()
    modules = select_linear(model, ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"])
    batches = [
        {"input_ids": torch.randint(0, 1000, (args.batch_size, args.seq)), "attention_mask": torch.ones(4, args.seq)}
        for _ in range(args.batches)
    ]
    print(
        f"machine: {processor()} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, {len(modules)} targets (q/k/v/gate/up), "
        f"{args.batches} batches of {args.batch_size} x {args.seq} tokens, best of {args.repeats}"
    )

    def run(shared: bool):
        start = time.perf_counter()
        if shared:
            result = compute_bases(model, modules, batches, progress=False)
        else:
            with mock.patch.object(InputRecorder, "_sharer", lambda self, x: None):
                result = compute_bases(model, modules, batches, progress=False)
        return time.perf_counter() - start, result

    best, bases = {True: float("inf"), False: float("inf")}, {}
    with CpuShare() as cpu:
        for _ in range(args.repeats):
            for shared in (False, True):
                seconds, (bases[shared], _, _) = run(shared)
                best[shared] = min(best[shared], seconds)
    identical = all(torch.equal(bases[True][n], bases[False][n]) for n in modules)
    owners = {id(u): n for n, u in bases[True].items()}  # one basis object per shared input
    held = {n: statistics_bytes(modules[n]) for n in owners.values()}
    print("\n| variant | seconds | statistics held (sizes) | decompositions |\n| --- | --- | --- | --- |")
    baseline_bytes = sum(statistics_bytes(m) for m in modules.values())
    print(f"| once per module (baseline) | {best[False]:.2f} | {baseline_bytes / 2**20:.0f} MiB | {len(modules)} |")
    print(
        f"| once per shared input (hf_ext) | {best[True]:.2f} | {sum(held.values()) / 2**20:.0f} MiB | {len(held)} |"
    )
    print(f"\nspeed-up {best[False] / best[True]:.2f}x; bases identical: {identical}; CPU share {cpu.share:.2f}")


if __name__ == "__main__":
    main()
