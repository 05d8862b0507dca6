"""WaRP overheads: each phase's hf_ext path against its plain-PyTorch baseline, in one process.

1. Phase 1 (basis): ``compute_bases`` over the basis batches vs one plain ``torch.no_grad()``
   forward pass over the same batches (both in eval mode). Target: ratio <= 1.3.
2. Phase 2 (importance): a training step of the reparameterized model (``W = C @ U.T``, only ``C``
   trainable) with vs without ``ImportanceAccumulator.update()`` after backward, for input and
   element granularity. Target: <= 5% overhead.
3. Phase 3 (masked update): a training step with only the target weights trainable (plain) vs the
   reparameterized model with ``MaskedUpdate`` (input-granularity masks, keep_ratio 0.1, from
   random scores): ``zero_frozen_grads_()`` after backward, ``restore_()`` after the step.
   Target: ratio <= 1.15.

Training steps are a plain PyTorch loop (forward, backward, AdamW step with weight decay 0.01,
zero_grad) with no Trainer, so the ratios isolate the library's work. Every variant trains its own
``copy.deepcopy`` of the loaded model in train mode, on the same batches in the same order; each
is warmed up, then each repeat times ``--steps`` steps per variant and the best repeat counts. The
variants are interleaved step by step (in a rotating order), so load from other processes falls on
all of them alike. The bases of phases 2 and 3 are the ones phase 1 computes (eigenbases of the
targets' inputs over the basis batches), at full rank; ``--basis random`` uses random orthonormal
bases instead and skips phase 1. The eigendecomposition share of phase 1 is
timed inside ``compute_bases`` by wrapping ``hf_ext.activations.eigenbasis`` (no library change).

The "CPU share" printed for each phase is this process's CPU time over wall time and threads: about
1.0 on an otherwise idle machine; well below 1.0 means other processes took cores and the
timings (and ratios) are not trustworthy.

Memory is reported as the bytes of the tensors hf_ext holds beyond the plain model (bases, frozen
values, masks, importance sums), computed from their sizes: peak RSS differences on CPU are
dominated by the allocator and are not reliable at this scale.

    python benchmarks/warp.py [--patterns "layer.[3-5].output.dense"] [--steps 20] [--basis-batches 40]
                              [--batch-size 32] [--basis computed|random]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
from machine import CpuShare, processor  # benchmarks/machine.py (the script directory is on sys.path)

import hf_ext.activations
from hf_ext.activations import compute_bases, orthonormality_error
from hf_ext.config import ModelArguments
from hf_ext.models import load_model, load_tokenizer
from hf_ext.targets import select_linear
from hf_ext.tasks import load_builtin_task
from hf_ext.warp.importance import ImportanceAccumulator
from hf_ext.warp.masking import MaskedUpdate, build_masks
from hf_ext.warp.reparam import coefficient_parameters, reparameterize


def _batches(tokenizer, count: int, size: int, max_length: int, labels: bool) -> list[dict[str, torch.Tensor]]:
    split = load_builtin_task("safety")["train"][: count * size]
    out = []
    for i in range(0, len(split["text"]), size):
        batch = dict(
            tokenizer(
                split["text"][i : i + size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        )
        if labels:
            batch["labels"] = torch.tensor(split["label"][i : i + size])
        out.append(batch)
    return out


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class _Timer:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, fn: Callable[[], object]):
        self.fn, self.seconds = fn, 0.0

    def __call__(self) -> None:
        start = time.perf_counter()
        self.fn()
        self.seconds += time.perf_counter() - start


class _Variant:
    """One model copy, its optimizer and the hf_ext calls made after backward and after the step."""

    def __init__(
        self,
        name: str,
        model,
        params: list[torch.Tensor],
        lr: float,
        weight_decay: float,
        after_backward: list[_Timer] = (),
        after_step: list[_Timer] = (),
    ):
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.name, self.model = name, model.train()
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.after_backward, self.after_step = list(after_backward), list(after_step)
        self.trainable = sum(p.numel() for p in params)

    def step(self, batch) -> None:
        """One optimizer step over ``batch``, or over a list of micro-batches (their losses averaged)."""
        micro_batches = batch if isinstance(batch, list) else [batch]
        for micro_batch in micro_batches:
            (self.model(**micro_batch).loss / len(micro_batches)).backward()
        for hook in self.after_backward:
            hook()
        self.optimizer.step()
        for hook in self.after_step:
            hook()
        self.optimizer.zero_grad(set_to_none=True)

    def timed_step(self, batch) -> float:
        start = time.perf_counter()
        self.step(batch)
        return time.perf_counter() - start

    def reset_hooks(self) -> None:
        for timer in (*self.after_backward, *self.after_step):
            timer.seconds = 0.0

    @property
    def hook_seconds(self) -> float:
        return sum(t.seconds for t in (*self.after_backward, *self.after_step))


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def _plain_forward(model, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return time.perf_counter() - start


def _reparameterized(model, patterns, bases):
    modules = select_linear(model, patterns)
    reparameterize(model, bases)
    return modules, coefficient_parameters(modules)


def _phase1(
    base, patterns, basis_batches, repeats: int, memory_gb: float | None = None
) -> tuple[dict[str, torch.Tensor], float]:
    """compute_bases vs a plain forward pass over the same batches, eval mode; prints the table."""
    model = copy.deepcopy(base).eval()
    modules = select_linear(model, patterns)
    _plain_forward(model, basis_batches[:3])  # warm-up
    eigh_seconds = [0.0]
    original_eigenbasis = hf_ext.activations.eigenbasis

    def timed_eigenbasis(*a, **kw):
        start = time.perf_counter()
        try:
            return original_eigenbasis(*a, **kw)
        finally:
            eigh_seconds[0] += time.perf_counter() - start

    phase1: dict[str, list[float]] = {"plain forward": [], "compute_bases": [], "eigh": []}
    phase1 |= {"compute_bases float32 eigh": [], "eigh float32": [], "compute_bases grouped": []}
    hf_ext.activations.eigenbasis = timed_eigenbasis
    try:
        with CpuShare() as cpu1:
            for _ in range(repeats):
                phase1["plain forward"].append(_plain_forward(model, basis_batches))
                for suffix, dtype in (("", torch.float64), (" float32", torch.float32)):
                    eigh_seconds[0] = 0.0
                    start = time.perf_counter()
                    found, _, _ = compute_bases(model, modules, basis_batches, eigh_dtype=dtype, progress=False)
                    phase1["compute_bases" + (" float32 eigh" if suffix else "")].append(time.perf_counter() - start)
                    phase1["eigh" + suffix].append(eigh_seconds[0])
                    if not suffix:
                        bases = found
                    else:
                        float32_error = max(orthonormality_error(u) for u in found.values())
                if memory_gb is not None:
                    start = time.perf_counter()
                    compute_bases(model, modules, basis_batches, memory_gb=memory_gb, progress=False)
                    phase1["compute_bases grouped"].append(time.perf_counter() - start)
    finally:
        hf_ext.activations.eigenbasis = original_eigenbasis
    del model
    best_at = min(range(repeats), key=lambda i: phase1["compute_bases"][i])
    best32 = min(range(repeats), key=lambda i: phase1["compute_bases float32 eigh"][i])
    best1 = {
        "plain forward": min(phase1["plain forward"]),
        "compute_bases": phase1["compute_bases"][best_at],
        "  of which input statistics": phase1["compute_bases"][best_at] - phase1["eigh"][best_at],
        "  of which eigendecomposition": phase1["eigh"][best_at],
        "compute_bases, float32 eigh": phase1["compute_bases float32 eigh"][best32],
        "  of which eigendecomposition ": phase1["eigh float32"][best32],
    }
    if memory_gb is not None:
        best1[f"compute_bases, {memory_gb:g} GiB groups"] = min(phase1["compute_bases grouped"])
    print(f"\nphase 1: basis vs one plain forward pass (eval mode, no grad); CPU share {cpu1.share:.2f}")
    for name, seconds in best1.items():
        print(f"  {name:<30} {seconds:7.3f} s   ratio to plain forward {seconds / best1['plain forward']:.3f}")
    print(f"  float32 eigh: max |U^T U - I| {float32_error:.1e}")
    print("  all repeats: " + "; ".join(f"{n} " + ", ".join(f"{x:.2f}" for x in v) for n, v in phase1.items() if v))
    return bases, best1["compute_bases"] / best1["plain forward"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:minilm")
    parser.add_argument("--patterns", nargs="+", default=["layer.[3-5].output.dense"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--basis-batches", type=int, default=40)
    parser.add_argument("--train-batches", type=int, default=20, help="distinct training batches, cycled")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant and repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep-ratio", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--basis-memory-gb", type=float, default=None, help="also time phase 1 in groups that fit this budget"
    )
    parser.add_argument(
        "--basis",
        choices=["computed", "random"],
        default="computed",
        help="computed: phase 1's eigenbases (default); random: random orthonormal bases, phase 1 skipped",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tokenizer = load_tokenizer(args.model)
    base = load_model(ModelArguments(model_name_or_path=args.model, task_type="seq_cls"), tokenizer, ["a", "b"]).eval()
    targets = select_linear(base, args.patterns)
    basis_batches = _batches(tokenizer, args.basis_batches, args.batch_size, args.max_length, labels=False)
    train_batches = _batches(tokenizer, args.train_batches, args.batch_size, args.max_length, labels=True)
    basis_tokens = sum(int(b["attention_mask"].sum()) for b in basis_batches)
    train_tokens = sum(int(b["attention_mask"].sum()) for b in train_batches)
    train_positions = sum(b["attention_mask"].numel() for b in train_batches)
    print(
        f"machine: {processor()} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"model {args.model}, targets {[f'{n} ({m.out_features}x{m.in_features})' for n, m in targets.items()]}")
    print(
        f"basis: {len(basis_batches)} batches of {args.batch_size}, {basis_tokens} tokens; training: "
        f"{len(train_batches)} batches cycled, {train_tokens / len(train_batches):.0f} tokens "
        f"({train_positions / len(train_batches):.0f} padded positions) per batch; best of {args.repeats}"
    )

    if args.basis == "computed":
        bases, ratio1 = _phase1(base, args.patterns, basis_batches, args.repeats, args.basis_memory_gb)
    else:
        generator = torch.Generator().manual_seed(args.seed)
        bases = {
            name: torch.linalg.qr(torch.randn(m.in_features, m.in_features, generator=generator))[0]
            for name, m in targets.items()
        }
        ratio1 = None
        print("\nphase 1 skipped: random orthonormal bases (QR of a Gaussian matrix) for phases 2-3")

    # Phases 2 and 3: training steps, each variant on its own copy.
    generator = torch.Generator().manual_seed(args.seed + 1)
    variants: list[_Variant] = []
    memory: dict[str, int] = {}

    model = copy.deepcopy(base)
    variants.append(
        _Variant(
            "plain (target W trainable)",
            model,
            [m.weight for m in select_linear(model, args.patterns).values()],
            args.lr,
            args.weight_decay,
        )
    )

    model = copy.deepcopy(base)
    _, params = _reparameterized(model, args.patterns, bases)
    variants.append(
        _Variant("reparameterized (C trainable)", model, list(params.values()), args.lr, args.weight_decay)
    )

    model = copy.deepcopy(base)
    modules, params = _reparameterized(model, args.patterns, bases)
    scores = {n: torch.rand(p.shape[1], generator=generator) for n, p in params.items()}
    masks, info = build_masks(scores, args.keep_ratio)
    masked = MaskedUpdate(params, masks)
    variants.append(
        _Variant(
            "reparameterized + MaskedUpdate",
            model,
            list(params.values()),
            args.lr,
            args.weight_decay,
            [_Timer(masked.zero_frozen_grads_)],
            [_Timer(masked.restore_)],
        )
    )
    memory["bases U (float32)"] = _nbytes(m.parametrizations.weight[0].basis for m in modules.values())
    memory["residuals (none at full rank)"] = _nbytes(m.parametrizations.weight[0].residual for m in modules.values())
    memory["frozen-value copies"] = _nbytes(e.values for e in masked.entries.values())
    memory["MaskedUpdate column indices"] = _nbytes(
        e.columns if e.columns is not None else e.mask for e in masked.entries.values()
    )
    memory["caller's bool masks"] = _nbytes(masks.values())
    transient = sum(m.out_features * m.in_features * 4 for m in modules.values())

    importance = {}
    for granularity in ("input", "element"):
        model = copy.deepcopy(base)
        _, params = _reparameterized(model, args.patterns, bases)
        importance[granularity] = ImportanceAccumulator(params, granularity=granularity)
        variants.append(
            _Variant(
                f"reparameterized + importance ({granularity})",
                model,
                list(params.values()),
                args.lr,
                args.weight_decay,
                [_Timer(importance[granularity].update)],
            )
        )
    plain_trainable, hf_trainable = variants[0].trainable, variants[2].trainable

    for i in range(args.warmup):
        for v in variants:
            v.step(train_batches[i % len(train_batches)])
    timings: dict[str, list[float]] = {v.name: [] for v in variants}
    hooks: dict[str, list[float]] = {v.name: [] for v in variants}
    steps: dict[str, list[float]] = {v.name: [] for v in variants}  # every timed step, for paired ratios
    with CpuShare() as cpu23:
        for repeat in range(args.repeats):
            for v in variants:
                v.reset_hooks()
            for i in range(args.steps):
                shift = (repeat * args.steps + i) % len(variants)
                for v in variants[shift:] + variants[:shift]:
                    steps[v.name].append(v.timed_step(train_batches[i % len(train_batches)]))
            for v in variants:
                timings[v.name].append(sum(steps[v.name][-args.steps :]) / args.steps)
                hooks[v.name].append(v.hook_seconds / args.steps)
    best = {name: min(values) for name, values in timings.items()}
    hook = {name: min(values) for name, values in hooks.items()}
    names = [v.name for v in variants]
    plain, reparam = best[names[0]], best[names[1]]

    def paired(name: str, baseline: str) -> float:
        """Median over steps of this variant's step time over the baseline's on the same batch, run back to back."""
        return statistics.median(a / b for a, b in zip(steps[name], steps[baseline]))

    print(
        f"\nphases 2-3: seconds per training step (fwd + bwd + AdamW + zero_grad), {args.steps} steps; "
        f"trainable: plain {plain_trainable}, hf_ext {hf_trainable}; CPU share {cpu23.share:.2f}"
    )
    for name in names:
        extra = f"   hf_ext calls {hook[name] * 1e3:6.2f} ms/step" if hook[name] else ""
        print(
            f"  {name:<42} {best[name]:7.4f} s   vs plain "
            f"{best[name] / plain:.3f} (paired {paired(name, names[0]):.3f})"
            f"   vs reparameterized {best[name] / reparam:.3f} (paired {paired(name, names[1]):.3f}){extra}"
        )
    print("  all repeats (s/step): " + "; ".join(", ".join(f"{x:.3f}" for x in timings[n]) for n in names))
    phase3 = best[names[2]] / plain
    print(
        f"\nphase 3 ratio hf_ext/plain: {phase3:.3f}, paired median {paired(names[2], names[0]):.3f} "
        f"(target <= 1.15: {'met' if phase3 <= 1.15 else 'NOT met'})"
    )
    for granularity, name in (("input", names[3]), ("element", names[4])):
        overhead = best[name] / reparam - 1
        direct = hook[name] / reparam
        print(
            f"phase 2 importance ({granularity}) overhead: {overhead * 100:+.1f}% end to end (paired median "
            f"{(paired(name, names[1]) - 1) * 100:+.1f}%), {direct * 100:.2f}% timed inside update() "
            f"(target <= 5%: {'met' if overhead <= 0.05 else 'NOT met'})"
        )
    if ratio1 is not None:
        print(
            f"phase 1 ratio compute_bases/plain forward: {ratio1:.3f} "
            f"(target <= 1.3: {'met' if ratio1 <= 1.3 else 'NOT met'})"
        )

    # Where the reparameterization's time goes: per target and step, W = C @ U.T in the forward and
    # dC = dW @ U in the backward, 2 * d_out * d_in^2 multiply-adds whatever the number of tokens.
    fixed_flops = sum(2 * 2 * m.out_features * m.in_features**2 for m in modules.values())
    own_flops = (
        sum(2 * m.out_features * m.in_features for m in modules.values()) * train_positions / len(train_batches)
    )
    products = []
    for m in modules.values():
        c, u = torch.randn(m.out_features, m.in_features), m.parametrizations.weight[0].basis
        products.append(lambda c=c, u=u: (c @ u.T, c @ u))
    fixed = min(_timed(lambda: [f() for f in products]) for _ in range(5))
    print(
        f"\nreparameterization: {fixed_flops / 1e9:.2f} GFLOP per step for forming W and dC of the targets "
        f"(their own forward matmuls: {own_flops / 1e9:.2f} GFLOP at {train_positions / len(train_batches):.0f} "
        f"positions per batch); these products alone take {fixed * 1e3:.1f} ms here, the measured "
        f"reparameterized - plain step difference is {(reparam - plain) * 1e3:.1f} ms"
    )

    print(
        "\nmemory hf_ext holds beyond the plain model (tensor sizes; C replaces W, same size, AdamW state same size):"
    )
    for name, nbytes in memory.items():
        print(f"  {name:<32} {nbytes / 2**20:8.3f} MiB")
    total = sum(memory.values())
    print(f"  {'total (phase 3)':<32} {total / 2**20:8.3f} MiB ({total / 1e6:.2f} MB)")
    for granularity, acc in importance.items():
        print(f"  phase 2 importance sums ({granularity}) {_nbytes(acc.sums.values()) / 2**20:8.3f} MiB")
    print(
        f"  transient: the formed W = C @ U.T of each target, kept for backward: {transient / 2**20:.3f} MiB per step"
    )
    print(
        "  masks: frozen columns per target "
        + ", ".join(f"{info.frozen[n]}/{info.total[n]}" for n in info.total)
        + f" (keep_ratio {args.keep_ratio})"
    )


if __name__ == "__main__":
    main()
