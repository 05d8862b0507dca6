"""Head importance costs: prefix-cached vs naive all-heads ablation, and gradient importance vs a plain pass.

1. All-heads ablation: ``ablation_importance(cache_prefix=True)`` (the output of block ``l - 1`` is
   cached once per layer, so only blocks ``l ..`` are recomputed for layer ``l``'s heads) against
   ``cache_prefix=False`` (every block recomputed for every head). Reported: seconds, speed ratio
   naive/cached, block evaluations per batch as the library counts them
   (``AblationResult.block_evaluations``) and as forward hooks on the model's blocks count them, the
   theory (L layers, H heads: naive ``L + L*H*L``, cached ``L + H*L*(L+1)/2 + (L-1)``; 438 and 263
   for 6 x 12) and the max |difference| between the two results (should be 0).
2. Gradient importance: ``gradient_importance`` (per-example gate gradients, one forward and one
   backward pass per batch) against one plain ``torch.no_grad()`` forward pass over the same batches,
   both in eval mode. Target: ratio <= 3.

All variants run on the same model and batches in one process, interleaved within each repeat; the
best repeat counts. The plain pass is also expressed as seconds per block evaluation, so the
ablations can be compared with "block evaluations x that" (the rest is the embeddings, classifier
and loss, which every evaluation pays in both modes).

The "CPU share" is this process's CPU time over wall time and threads: about 1.0 on an otherwise
idle machine; well below 1.0 means other processes took cores and the timings are not trustworthy.

``--ablations-per-pass g`` passes ``ablations_per_pass=g`` to both modes (g heads of a layer ablated
in one forward pass over g copies of the batch); the hook count is rows through the blocks over the
number of examples, so it stays comparable with the library's count.

    python benchmarks/heads.py [--examples 256] [--batch-size 64] [--max-length 64] [--repeats 3]
                               [--ablations-per-pass 1]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from machine import CpuShare, processor  # benchmarks/machine.py (the script directory is on sys.path)

from hf_ext.config import DataArguments, ModelArguments
from hf_ext.data import prepare_data
from hf_ext.heads.gates import HeadGates
from hf_ext.heads.importance import ablation_importance, gradient_importance, per_example_loss
from hf_ext.models import load_model, load_tokenizer
from hf_ext.targets import find_blocks


class _BlockCounter:
    """Counts the rows (examples) that pass through the model's real blocks; replayed stand-ins are not
    the blocks, so they are not counted. Rows / examples = block evaluations over the whole set, whether
    or not several ablations share one forward pass."""

    def __init__(self, model):
        _, blocks = find_blocks(model)
        self.rows = 0
        self.handles = [block.register_forward_hook(self._count) for block in blocks]

    def _count(self, module, args, output):
        hidden = output if torch.is_tensor(output) else output[0]
        self.rows += hidden.shape[0]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def _plain(model, batches) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    logits = [model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches]
    return time.perf_counter() - start, logits


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:minilm")
    parser.add_argument("--dataset", default="builtin:topic")
    parser.add_argument("--labels", nargs="+", default=["world", "sports", "business", "science"])
    parser.add_argument("--examples", type=int, default=256, help="first N validation examples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--ablations-per-pass",
        type=int,
        default=1,
        help="ablation_importance's ablations_per_pass (heads of one layer per forward pass), both modes",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall_start = time.perf_counter()

    tokenizer = load_tokenizer(args.model)
    model = load_model(
        ModelArguments(model_name_or_path=args.model, task_type="seq_cls"), tokenizer, args.labels
    ).eval()
    data = prepare_data(DataArguments(dataset_name=args.dataset, max_seq_length=args.max_length), tokenizer, "seq_cls")
    examples = data.validation.select(range(min(args.examples, len(data.validation))))
    batches = [
        data.collator([examples[j] for j in range(i, min(i + args.batch_size, len(examples)))])
        for i in range(0, len(examples), args.batch_size)
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    positions = sum(b["attention_mask"].numel() for b in batches)
    layers, heads = HeadGates(model).shape

    print(
        f"machine: {processor()} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"model {args.model} ({layers} layers x {heads} heads = {layers * heads} heads), {args.dataset} validation: "
        f"{len(examples)} examples in {len(batches)} batches of <= {args.batch_size}, {tokens} tokens "
        f"({positions} padded positions); best of {args.repeats}; ablations per pass {args.ablations_per_pass}"
    )

    _plain(model, batches)  # warm-up
    timings: dict[str, list[float]] = {
        "plain forward": [],
        "ablation, naive": [],
        "ablation, prefix-cached": [],
        "gradient importance": [],
    }
    counted: dict[str, int] = {}
    results = {}
    with CpuShare() as cpu:
        for repeat in range(args.repeats):
            seconds, logits = _plain(model, batches)
            timings["plain forward"].append(seconds)
            order = [("ablation, prefix-cached", True), ("ablation, naive", False)]
            for name, cache_prefix in order if repeat % 2 == 0 else order[::-1]:
                counter = _BlockCounter(model)
                try:
                    seconds, results[name] = _timed(
                        lambda c=cache_prefix: ablation_importance(
                            model, batches, cache_prefix=c, ablations_per_pass=args.ablations_per_pass, progress=False
                        )
                    )
                finally:
                    counter.remove()
                timings[name].append(seconds)
                counted[name] = counter.rows
            seconds, gradient = _timed(lambda: gradient_importance(model, batches, progress=False))
            timings["gradient importance"].append(seconds)
    best = {name: min(values) for name, values in timings.items()}
    plain = best["plain forward"]

    naive, cached = results["ablation, naive"], results["ablation, prefix-cached"]
    theory = {
        "ablation, naive": layers + layers * heads * layers,
        "ablation, prefix-cached": layers + heads * layers * (layers + 1) // 2 + (layers - 1),
    }
    per_block = plain / layers
    print(
        f"\nseconds (best of {args.repeats}); block evaluations "
        "per batch: library count / forward-hook count / theory; "
        f"CPU share {cpu.share:.2f}"
    )
    print(
        f"  {'variant':<26} {'seconds':>8}  {'vs plain':>9}  "
        f"{'blocks (lib/hooks/theory)':>26}  {'blocks x plain/L':>16}"
    )
    for name, seconds in best.items():
        if name in theory:
            blocks = f"{results[name].block_evaluations} / {counted[name] / len(examples):g} / {theory[name]}"
            predicted = f"{results[name].block_evaluations * per_block:13.3f} s"
        else:
            blocks = f"{layers}" if name == "plain forward" else "-"
            predicted = ""
        print(f"  {name:<26} {seconds:8.3f}  {seconds / plain:8.2f}x  {blocks:>26}  {predicted:>16}")
    print("  all repeats: " + "; ".join(f"{n} " + ", ".join(f"{x:.3f}" for x in v) for n, v in timings.items()))

    speed = best["ablation, naive"] / best["ablation, prefix-cached"]
    block_ratio = naive.block_evaluations / cached.block_evaluations
    loss_diff = (naive.loss_increase - cached.loss_increase).abs().max().item()
    acc_diff = (naive.accuracy_drop - cached.accuracy_drop).abs().max().item()
    base_diff = max(abs(naive.base_loss - cached.base_loss), abs(naive.base_accuracy - cached.base_accuracy))
    plain_loss, plain_acc = (
        t.mean().item()
        for t in map(torch.cat, zip(*(per_example_loss(lg, b["labels"]) for lg, b in zip(logits, batches))))
    )
    print(
        f"\nablation speed ratio naive/cached: {speed:.3f}; block evaluations naive/cached: {naive.block_evaluations}/"
        f"{cached.block_evaluations} = {block_ratio:.3f} (theory {theory['ablation, naive']}/"
        f"{theory['ablation, prefix-cached']} = {theory['ablation, naive'] / theory['ablation, prefix-cached']:.3f})"
    )
    exactly_equal = torch.equal(naive.loss_increase, cached.loss_increase) and torch.equal(
        naive.accuracy_drop, cached.accuracy_drop
    )
    print(
        f"identical results: max |diff| loss_increase {loss_diff:.3g}, accuracy_drop {acc_diff:.3g}, "
        f"base loss/accuracy {base_diff:.3g}; exactly equal: {exactly_equal}"
    )
    print(
        f"base loss {cached.base_loss:.4f}, accuracy {cached.base_accuracy:.4f} (plain ungated pass: loss "
        f"{plain_loss:.4f}, accuracy {plain_acc:.4f}); loss_increase range [{cached.loss_increase.min():.4f}, "
        f"{cached.loss_increase.max():.4f}], accuracy_drop range [{cached.accuracy_drop.min():.4f}, "
        f"{cached.accuracy_drop.max():.4f}]"
    )
    ratio = best["gradient importance"] / plain
    print(
        f"gradient importance / plain forward: {ratio:.3f} (target <= 3: {'met' if ratio <= 3 else 'NOT met'}); "
        f"{gradient.examples} examples, gradient range [{gradient.gradient.min():.3g}, {gradient.gradient.max():.3g}]"
    )
    print(f"whole run: {time.perf_counter() - wall_start:.0f} s")


if __name__ == "__main__":
    main()
