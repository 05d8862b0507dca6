"""WaRP phase 3 at 1, 2 and 8 gradient-accumulation steps: the leaf-weight path against the parametrized one.

Three variants train the same targets of the embedded MiniLM on the same micro-batches, each on its own
``copy.deepcopy``, in a plain PyTorch loop (no Trainer): an optimizer step is ``accumulation`` forward +
backward passes, then AdamW (weight decay 0.01) and zero_grad.

- plain: the target weights trainable (the baseline);
- parametrized: ``W = C @ U.T`` through ``torch.nn.utils.parametrize`` (formed in every forward, ``dC`` in
  every backward) + ``MaskedUpdate``;
- leaf: :class:`hf_ext.warp.leaf.LeafReparameterization` (``W`` formed once per optimizer step from the
  trainable columns, ``C.grad = W.grad @ U`` once per step) + ``MaskedUpdate``: what the recipe's phase 3 runs.

Masks: input granularity, ``keep_ratio`` of the columns frozen at random. Variants are interleaved step by
step in a rotating order; each repeat times ``--steps`` optimizer steps per variant; the best repeat counts.

    python benchmarks/warp_phase3.py [--patterns "layer.[3-5].output.dense"] [--accumulation 1 2 8]
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch
import warp  # benchmarks/warp.py
from machine import CpuShare, processor  # benchmarks/machine.py (the script directory is on sys.path)

from hf_ext.config import ModelArguments
from hf_ext.models import load_model, load_tokenizer
from hf_ext.targets import select_linear
from hf_ext.warp.leaf import LeafReparameterization
from hf_ext.warp.masking import MaskedUpdate, build_masks
from hf_ext.warp.reparam import coefficient_parameters, reparameterize


def _variants(base, patterns, bases, masks, args) -> list[warp._Variant]:
    plain = copy.deepcopy(base)
    weights = [m.weight for m in select_linear(plain, patterns).values()]
    parametrized = copy.deepcopy(base)
    params = coefficient_parameters(reparameterize(parametrized, bases))
    masked = MaskedUpdate(params, masks)
    leaf_model = copy.deepcopy(base)
    leaf = LeafReparameterization(leaf_model, bases, masks=masks)
    leaf_masked = MaskedUpdate(leaf.coefficients, masks)
    leaf_params = [*leaf.coefficients.values(), *leaf.weights.values()]  # W carries the gradient, has no step
    return [
        warp._Variant("plain (target W trainable)", plain, weights, args.lr, args.weight_decay),
        warp._Variant(
            "parametrized + MaskedUpdate",
            parametrized,
            list(params.values()),
            args.lr,
            args.weight_decay,
            [masked.zero_frozen_grads_],
            [masked.restore_],
        ),
        warp._Variant(
            "leaf W + MaskedUpdate",
            leaf_model,
            leaf_params,
            args.lr,
            args.weight_decay,
            [leaf.project_grads_, leaf_masked.zero_frozen_grads_],
            [leaf_masked.restore_, leaf.form_weights_],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:minilm")
    parser.add_argument("--patterns", nargs="+", default=["layer.[3-5].output.dense"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--micro-batches", type=int, default=16, help="distinct micro-batches, cycled")
    parser.add_argument("--accumulation", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per variant and repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep-ratio", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tokenizer = load_tokenizer(args.model)
    base = load_model(ModelArguments(model_name_or_path=args.model, task_type="seq_cls"), tokenizer, ["a", "b"])
    targets = select_linear(base, args.patterns)
    generator = torch.Generator().manual_seed(0)
    bases = {
        n: torch.linalg.qr(torch.randn(m.in_features, m.in_features, generator=generator))[0]
        for n, m in targets.items()
    }
    masks, _ = build_masks({n: torch.rand(m.in_features, generator=generator) for n, m in targets.items()}, 0.1)
    batches = warp._batches(tokenizer, args.micro_batches, args.batch_size, args.max_length, labels=True)
    print(
        f"machine: {processor()} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"model {args.model}, targets {[f'{n} ({m.out_features}x{m.in_features})' for n, m in targets.items()]}, "
        f"micro-batches of {args.batch_size}, keep_ratio {args.keep_ratio} (random input-direction masks), "
        f"{args.steps} optimizer steps per variant, best of {args.repeats}"
    )
    print(
        "\n| accumulation | plain s/step | parametrized s/step | leaf s/step | parametrized / plain | leaf / plain |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for accumulation in args.accumulation:
        variants = _variants(base, args.patterns, bases, masks, args)
        steps = [
            [batches[(s * accumulation + i) % len(batches)] for i in range(accumulation)]
            for s in range(1 + args.repeats * args.steps)
        ]
        for v in variants:
            v.step(steps[0])  # warm-up
        best = {v.name: float("inf") for v in variants}
        with CpuShare() as cpu:
            for repeat in range(args.repeats):
                totals = dict.fromkeys(best, 0.0)
                for i in range(args.steps):
                    chosen = steps[1 + repeat * args.steps + i]
                    shift = (repeat * args.steps + i) % len(variants)
                    for v in variants[shift:] + variants[:shift]:
                        totals[v.name] += v.timed_step(chosen)
                for name, total in totals.items():
                    best[name] = min(best[name], total / args.steps)
        plain, parametrized, leaf = best.values()
        print(
            f"| {accumulation} | {plain:.3f} | {parametrized:.3f} | {leaf:.3f} | {parametrized / plain:.3f} | "
            f"{leaf / plain:.3f} |   (CPU share {cpu.share:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
