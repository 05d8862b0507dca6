"""Streaming input statistics vs. a plain forward pass and vs. the keep-every-activation baseline.

The baseline is what research code commonly does: append each batch's (masked) activations to a
list, concatenate, then form ``X^T X``; its memory grows with the data. hf_ext streams ``X^T X``
into a float64 accumulator whose size is fixed. All three run over the same batches in one process.

    python benchmarks/input_statistics.py [--patterns layer.5.output.dense] [--batches 40]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hf_ext.activations import collect_input_statistics
from hf_ext.config import ModelArguments
from hf_ext.models import load_model, load_tokenizer
from hf_ext.targets import select_linear
from hf_ext.tasks import load_builtin_task


def _batches(tokenizer, count: int, size: int):
    texts = load_builtin_task("safety")["train"]["text"][: count * size]
    return [
        dict(tokenizer(texts[i : i + size], padding=True, return_tensors="pt")) for i in range(0, len(texts), size)
    ]


@torch.no_grad()
def _plain(model, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return time.perf_counter() - start


@torch.no_grad()
def _keep_everything(model, modules, batches) -> tuple[float, int]:
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    mask: list[torch.Tensor] = []
    handles = [
        m.register_forward_pre_hook(lambda _, args, n=n: kept[n].append(args[0][mask[0]].detach().clone()))
        for n, m in modules.items()
    ]
    start = time.perf_counter()
    for batch in batches:
        mask[:] = [batch["attention_mask"].bool()]
        model(**batch)
    stored = sum(t.numel() * t.element_size() for ts in kept.values() for t in ts)
    for chunks in kept.values():
        x = torch.cat(chunks).double()
        _ = x.T @ x
    elapsed = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    return elapsed, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:minilm")
    parser.add_argument("--patterns", nargs="+", default=["layer.5.output.dense"])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    model = load_model(ModelArguments(model_name_or_path=args.model), tokenizer, ["a", "b"]).eval()
    modules = select_linear(model, args.patterns)
    batches = _batches(tokenizer, args.batches, args.batch_size)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    _plain(model, batches[:3])  # warm-up

    timings = {
        "plain forward": [],
        "hf_ext float32 products": [],
        "hf_ext float64 products": [],
        "keep-all baseline": [],
    }
    stored = 0
    for _ in range(args.repeats):
        timings["plain forward"].append(_plain(model, batches))
        for dtype, label in ((torch.float64, "hf_ext float64 products"), (torch.float32, "hf_ext float32 products")):
            start = time.perf_counter()
            stats = collect_input_statistics(model, modules, batches, compute_dtype=dtype, progress=False)
            timings[label].append(time.perf_counter() - start)
        elapsed, stored = _keep_everything(model, modules, batches)
        timings["keep-all baseline"].append(elapsed)
    state_bytes = sum(
        t.numel() * t.element_size() for s in stats.values() for t in [*s.state_dict().values(), s._buffer]
    )

    best = {name: min(values) for name, values in timings.items()}
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(
        f"model {args.model}, modules {list(modules)}, {len(batches)} "
        f"batches, {tokens} tokens (best of {args.repeats})"
    )
    for name, seconds in best.items():
        print(f"  {name:<26} {seconds:7.3f} s   ratio to plain forward {seconds / best['plain forward']:.3f}")
    print(
        f"  memory: hf_ext sums + product buffer {state_bytes / 2**20:.2f} "
        f"MiB (fixed); baseline kept {stored / 2**20:.2f} MiB "
        f"(grows with tokens; ratio {stored / state_bytes:.1f}x at this size)"
    )


if __name__ == "__main__":
    main()
