"""Selective-layer training: train the last k of L blocks of a deep tiny Llama classifier, three ways.

A randomly initialised Llama sequence classifier (default 16 blocks, hidden 256, intermediate 688, 4 attention heads,
2 key/value heads, SDPA attention, 2 labels) trains on batches of random token ids (default 8 x 512, rows right-padded
to lengths between 3/4 and all of the sequence, with an attention mask). Three arms, on the same weights and batches:

1. everything trainable (plain fine-tuning);
2. blocks ``0 .. L-k-1`` frozen with ``requires_grad=False`` (``select_trainable(..., no_grad_prefix=False)``) and
   ``model.enable_input_require_grads()``, what transformers does whenever gradient checkpointing is on and what peft
   does: autograd records the frozen prefix and keeps its activations for a backward pass through it;
3. the prefix under no_grad (``select_trainable(..., no_grad_prefix=True)``), also with
   ``enable_input_require_grads()``, to show that it makes no difference there.

Arms 2 and 3 train the last k blocks and the ``score`` head.

Per arm:

- saved-for-backward bytes and autograd nodes of one training forward pass (``inspect_graph`` on the first batch,
  in this process): distinct non-parameter storages saved for backward;
- peak RSS of training, in a fresh subprocess per arm (this script with ``--arm N``): the peak resident set size
  (VmHWM, reset through /proc/self/clear_refs) over the warm-up and timed steps minus the resident set size after
  building the model, applying the arm, making the batches and creating AdamW (before its first step). It holds the
  gradients and AdamW state (created at the first step), the activations and the allocator's slack;
- step time: forward, backward, ``AdamW.step`` and ``zero_grad``, median over ``--steps`` steps after ``--warmup``
  warm-up steps (default 5 after 2), in the same subprocess.

Then the ratios: saved bytes arm 3 / arm 2 against k/L and against what arm 2's own per-block rows predict; arm 3 /
arm 1; peak RSS and step time ratios; and the sanity checks: arms 2 and 3 give the same loss on the same batch and
weights (inspection pass, and every training step), and arm 3's prefix blocks have 0 nodes and 0 saved bytes.

The CPU share (process CPU time / (wall time x threads)) should be near 1.0; well below means other processes
took cores and the step times are not trustworthy.

    python benchmarks/selective.py [--blocks 16] [--train-last 4] [--hidden 256] [--seq-len 512] [--batch-size 8]
                                   [--warmup 2] [--steps 5] [--attn sdpa] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from machine import (  # benchmarks/machine.py (the script directory is on sys.path)
    CpuShare,
    processor,
    reset_peak,
    status_kib,
)

from hf_ext.models import tiny_model
from hf_ext.selective.config import SelectiveArguments
from hf_ext.selective.inspect import inspect_graph
from hf_ext.selective.selection import select_trainable

ARMS = {
    1: "everything trainable",
    2: "prefix requires_grad=False + input grads",
    3: "prefix under no_grad (+ input grads)",
}
QUICK = {"blocks": 4, "train_last": 1, "hidden": 64, "seq_len": 64, "batch_size": 2, "warmup": 1, "steps": 2}
MIB = 2**20
FIRST_WORD_ID = 7  # the tiny tokenizer's special tokens come first


def _intermediate(args) -> int:
    """``--intermediate``, else 8/3 x hidden rounded to a multiple of 16 (688 for 256)."""
    return args.intermediate or 16 * round(8 * args.hidden / 3 / 16)


def _build(args, arm: int):
    """The model of ``arm`` (same seed, same weights for every arm) and its tokenizer."""
    model, tokenizer = tiny_model(
        "llama",
        "seq_cls",
        seed=0,
        num_labels=2,
        num_hidden_layers=args.blocks,
        hidden_size=args.hidden,
        intermediate_size=_intermediate(args),
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.seq_len,
        attn_implementation=args.attn,
    )
    if model.config._attn_implementation != args.attn:
        raise RuntimeError(f"asked for {args.attn} attention, the model uses {model.config._attn_implementation}")
    if arm > 1:
        selective = SelectiveArguments(train_layers=f"last:{args.train_last}")
        model, _ = select_trainable(model, selective, "seq_cls", no_grad_prefix=arm == 3)
        model.enable_input_require_grads()
    return model.train(), tokenizer


def _batches(args, tokenizer, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of random word ids, right-padded to random lengths in [3/4, 1] x seq_len; same every run."""
    generator = torch.Generator().manual_seed(1234)
    b, s = args.batch_size, args.seq_len
    batches = []
    for _ in range(count):
        ids = torch.randint(FIRST_WORD_ID, len(tokenizer), (b, s), generator=generator)
        lengths = torch.randint(3 * s // 4, s + 1, (b,), generator=generator)
        lengths[0] = s
        mask = (torch.arange(s) < lengths[:, None]).long()
        ids[mask == 0] = tokenizer.pad_token_id
        labels = torch.randint(0, 2, (b,), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def _child(args) -> None:
    """One arm in this fresh process: train ``--warmup + --steps`` steps, print one JSON line on stdout."""
    torch.manual_seed(0)
    model, tokenizer = _build(args, args.arm)
    batches = _batches(args, tokenizer, min(args.warmup + args.steps, 4))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01)
    gc.collect()
    method = reset_peak()
    before = status_kib()["VmRSS"]
    losses, seconds = [], []
    with CpuShare() as share:
        for step in range(args.warmup + args.steps):
            batch = batches[step % len(batches)]
            start = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    peak = status_kib()["VmHWM"]
    result = {
        "arm": args.arm,
        "losses": losses,
        "seconds": seconds,
        "peak_kib": peak - before,
        "base_kib": before,
        "share": share.share,
        "method": method,
        "trainable": sum(p.numel() for p in trainable),
        "total": sum(p.numel() for p in model.parameters()),
    }
    print(json.dumps(result))


def _run_child(args, arm: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--arm", str(arm)]
    for option in ("blocks", "train_last", "hidden", "intermediate", "heads", "kv_heads", "seq_len", "batch_size"):
        value = getattr(args, option)
        if value is not None:
            command += [f"--{option.replace('_', '-')}", str(value)]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--attn", args.attn]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.child_timeout)
    if done.returncode != 0:
        sys.exit(f"arm {arm} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _inspect(args, arm: int, batch) -> dict:
    model, _ = _build(args, arm)
    report = inspect_graph(model, batch)
    rows = {r.index: r for r in report.rows if r.index is not None}
    outside = sum(r.saved_bytes for r in report.rows if r.index is None)
    return {
        "saved": report.saved_bytes,
        "nodes": report.autograd_nodes,
        "loss": report.loss,
        "block_saved": [rows[i].saved_bytes for i in range(args.blocks)],
        "block_nodes": [rows[i].autograd_nodes for i in range(args.blocks)],
        "outside_saved": outside,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=16, help="L, transformer blocks")
    parser.add_argument("--train-last", type=int, default=4, help="k, the trained blocks at the top")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width (default 8/3 x hidden, to 16)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per arm, after the warm-up steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per arm before the timed ones")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run: " + str(QUICK))
    parser.add_argument("--child-timeout", type=int, default=600, help="seconds allowed to one arm's subprocess")
    parser.add_argument("--arm", type=int, choices=sorted(ARMS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if not 1 <= args.train_last < args.blocks:
        parser.error(f"--train-last must be between 1 and --blocks - 1 ({args.blocks - 1})")
    if args.arm:
        _child(args)
        return

    wall = time.perf_counter()
    L, k = args.blocks, args.train_last
    print(
        f"machine: {processor()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, python {platform.python_version()}; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    print(
        f"model: tiny Llama seq_cls, {L} blocks, hidden {args.hidden}, intermediate {_intermediate(args)}, "
        f"{args.heads} heads / {args.kv_heads} kv heads, {args.attn} attention, float32; train the last {k} blocks "
        f"+ score head (arms 2, 3)"
    )
    print(
        f"batches: {args.batch_size} x {args.seq_len} random word ids, right-padded rows (attention mask); "
        f"AdamW lr 1e-4; {args.warmup} warm-up + {args.steps} timed steps per arm"
    )

    _, tokenizer = tiny_model("llama", "seq_cls", num_labels=2)
    batch = _batches(args, tokenizer, 1)[0]
    print(f"first batch: {int(batch['attention_mask'].sum())} tokens of {batch['attention_mask'].numel()} positions")
    graphs = {}
    for arm in ARMS:
        graphs[arm] = _inspect(args, arm, batch)
        gc.collect()
    runs = {}
    for arm in ARMS:
        runs[arm] = _run_child(args, arm)
    step = {arm: statistics.median(runs[arm]["seconds"][args.warmup :]) for arm in ARMS}
    rss = {arm: runs[arm]["peak_kib"] * 1024 for arm in ARMS}
    shares = {arm: runs[arm]["share"] for arm in ARMS}
    print(f"peak RSS: {runs[1]['method']}; RSS after model + optimizer creation ~{runs[1]['base_kib'] / 1024:.0f} MiB")
    print(
        f"CPU share of the training steps: {', '.join(f'arm {a} {share:.2f}' for a, share in shares.items())}; "
        f"load average at end {os.getloadavg()[0]:.2f}"
    )

    print(
        "\n| arm | trainable params | autograd nodes | saved for backward MiB | grads + AdamW state MiB "
        "| peak RSS increase MiB | step s (median) |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for arm, label in ARMS.items():
        g, r = graphs[arm], runs[arm]
        print(
            f"| {arm}. {label} | {r['trainable']:,} | {g['nodes']:,} | {g['saved'] / MIB:.1f} | "
            f"{3 * 4 * r['trainable'] / MIB:.1f} | {rss[arm] / MIB:.1f} | {step[arm]:.3f} |"
        )
    print(f"\nall step times (s, the first {args.warmup} are warm-up):")
    for arm in ARMS:
        print(f"  arm {arm}: " + ", ".join(f"{t:.3f}" for t in runs[arm]["seconds"]))

    g2, g3 = graphs[2], graphs[3]
    rows = g2["block_saved"]
    # storages every block uses (rotary cos/sin, the attention mask) count in the first block that saves them:
    # block 0 in arm 2, block L-k in arm 3; they are block 0's excess over the other frozen blocks
    frozen = statistics.mean(rows[1 : L - k]) if L - k > 1 else rows[0]
    shared = rows[0] - frozen
    trained = statistics.mean(rows[L - k :])
    expected = (g2["outside_saved"] + shared + k * trained) / g2["saved"]
    print("\nper block in arm 2 (saved for backward, MiB):")
    print("  " + ", ".join(f"{i}: {b / MIB:.2f}" for i, b in enumerate(rows)))
    print(
        f"  outside the blocks {g2['outside_saved'] / MIB:.2f}; shared by every block (block 0's excess) "
        f"{shared / MIB:.2f}; a frozen block (mean of blocks 1-{L - k - 1}) {frozen / MIB:.2f}; a trained block "
        f"(mean) {trained / MIB:.2f}; frozen / trained {frozen / trained:.3f}; arm 1, mean block "
        f"{statistics.mean(graphs[1]['block_saved'][1:]) / MIB:.2f}"
    )
    print("\nratios:")
    print(
        f"  saved bytes arm 3 / arm 2: {g3['saved'] / g2['saved']:.3f} measured; k/L = {k}/{L} = {k / L:.3f}; "
        f"expected from arm 2's rows (outside + shared + k x trained block) / arm 2 total = {expected:.3f}"
    )
    lowest2, lowest3 = rows[L - k], g3["block_saved"][L - k]
    print(
        f"  arm 3's lowest trained block (block {L - k}) saves {lowest3 / MIB:.2f} MiB ({g3['block_nodes'][L - k]} "
        f"nodes) against {lowest2 / MIB:.2f} MiB ({g2['block_nodes'][L - k]} nodes) in arm 2, although it also holds "
        f"the shared storages there: its input does not require grad, so it needs no input gradient; without that "
        f"difference the measured ratio would be {(g3['saved'] + lowest2 + shared - lowest3) / g2['saved']:.3f}"
    )
    print(
        "  (a block frozen with requires_grad=False still records its graph because its input requires grad, but "
        "it keeps only what the input gradient needs and none of the linear layers' inputs that weight gradients "
        "need, so it saves less than a trained block and the measured ratio sits above k/L)"
    )
    print(
        f"  saved bytes arm 3 / arm 1: {g3['saved'] / graphs[1]['saved']:.3f}; arm 2 / arm 1: "
        f"{g2['saved'] / graphs[1]['saved']:.3f}"
    )
    print(
        f"  autograd nodes arm 3 / arm 2: {g3['nodes'] / g2['nodes']:.3f}; arm 3 / arm 1: "
        f"{g3['nodes'] / graphs[1]['nodes']:.3f}"
    )
    print(
        f"  peak RSS increase arm 3 / arm 2: {rss[3] / rss[2]:.3f}; arm 3 / arm 1: {rss[3] / rss[1]:.3f}; "
        f"arm 2 / arm 1: {rss[2] / rss[1]:.3f}"
    )
    print(
        f"  step time arm 3 / arm 2: {step[3] / step[2]:.3f}; arm 3 / arm 1: {step[3] / step[1]:.3f}; "
        f"arm 2 / arm 1: {step[2] / step[1]:.3f}"
    )

    print("\nsanity:")
    same_loss = g2["loss"] == g3["loss"]
    print(
        f"  inspection loss on the first batch: arm 1 {graphs[1]['loss']:.6f}, arm 2 {g2['loss']:.6f}, "
        f"arm 3 {g3['loss']:.6f}; arms 2 and 3 identical: {same_loss}"
    )
    differences = [abs(a - b) for a, b in zip(runs[2]["losses"], runs[3]["losses"], strict=True)]
    print(
        f"  training losses of arms 2 and 3 over {len(differences)} steps: max |difference| {max(differences):.3g} "
        f"(arm 2: {', '.join(f'{v:.6f}' for v in runs[2]['losses'])})"
    )
    prefix_nodes = sum(g3["block_nodes"][:-k])
    prefix_saved = sum(g3["block_saved"][:-k])
    clean = prefix_nodes == 0 and prefix_saved == 0
    print(f"  arm 3 prefix blocks 0-{L - k - 1}: {prefix_nodes} nodes, {prefix_saved} saved bytes: {clean}")
    print(f"\nwall time {time.perf_counter() - wall:.0f} s")
    if not (same_loss and max(differences) == 0 and clean):
        sys.exit("sanity check failed")


if __name__ == "__main__":
    main()
