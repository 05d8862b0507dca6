"""Drift costs on the embedded MiniLM: dumping, in-training measurement, streaming CKA.

1. Dump throughput: ``dump_representations`` (every token of the embeddings and 6 blocks, float16
   shards written by the background thread) against a plain ``torch.no_grad()`` eval forward pass over
   the same batches. Reported as throughput dump / plain (target >= 0.85).
2. In-training drift of a LoRA model: one ``measure_drift`` call (each batch with the adapter off and on,
   CKA and cosine of 7 layers) against one plain eval pass of the same model over the same set
   (target <= 2.2, pooling ``mean``, the callback's default; ``tokens`` is reported beside it). Then the
   training step time with a :class:`DriftCallback` that is not due against no callback (target 1.0), timed
   from the start of step 2 to the start of the last step (the callback measures at the end of the last).
3. Streaming CKA at 1x, 10x and 100x rows (width 384): seconds and the bytes the accumulator holds, against
   the Gram formula's two ``n x n`` float64 matrices, timed where they fit in this machine's memory.

Variants are interleaved within each repeat; the best repeat counts. The CPU share (process CPU time over
wall time x threads) should be near 1.0; well below means other processes took cores.

    python benchmarks/drift.py [--examples 512] [--batch-size 64] [--max-length 128] [--repeats 5] [--train-steps 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from machine import CpuShare, processor  # benchmarks/machine.py (the script directory is on sys.path)
from transformers import TrainerCallback

from hf_ext.config import DataArguments, ModelArguments
from hf_ext.data import prepare_data
from hf_ext.drift.callbacks import DriftCallback
from hf_ext.drift.measure import measure_drift
from hf_ext.drift.metrics import CKAAccumulator, gram_linear_cka
from hf_ext.drift.shards import dump_representations
from hf_ext.models import load_model, load_tokenizer


def _best(times: list[float]) -> float:
    return min(times)


@torch.no_grad()
def _plain(model, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        model(**{k: v for k, v in batch.items() if k != "labels"})
    return time.perf_counter() - start


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _held_bytes(accumulator: CKAAccumulator) -> int:
    tensors = list(accumulator._sums.values())
    if accumulator._rows is not None:
        tensors += accumulator._rows[0] + accumulator._rows[1]
    return sum(t.numel() * t.element_size() for t in tensors)


def _available_memory() -> int:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def _streaming(width: int, base_rows: int) -> list[dict]:
    results = []
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(width, width, generator=generator) / width**0.5
    for factor in (1, 10, 100):
        n = base_rows * factor
        accumulator = CKAAccumulator()
        start = time.perf_counter()
        for lo in range(0, n, 4096):
            x = torch.randn(min(4096, n - lo), width, generator=generator)
            accumulator.update(x, x @ mixing + 0.5 * torch.randn(x.shape, generator=generator))
        value = accumulator.cka()
        seconds = time.perf_counter() - start
        gram_bytes = 2 * n * n * 8
        gram_seconds = None
        if gram_bytes * 3 < _available_memory():
            x = torch.randn(n, width, generator=generator, dtype=torch.float64)
            y = x @ mixing.double()
            start = time.perf_counter()
            gram_linear_cka(x @ x.T, y @ y.T)
            gram_seconds = time.perf_counter() - start
        results.append(
            {
                "rows": n,
                "seconds": seconds,
                "held_bytes": _held_bytes(accumulator),
                "cka": value,
                "gram_bytes": gram_bytes,
                "gram_seconds": gram_seconds,
            }
        )
    return results


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.starts: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.starts.append(time.perf_counter())


def _train_steps(model_args, tokenizer, data, steps: int, with_callback: bool, batches) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from hf_ext.trainer import HfExtTrainer

    model = load_model(model_args, tokenizer, data.labels, seed=0)
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=32,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            logging_steps=10_000,
        )
        timer = _StepTimer()
        callbacks = [timer, DriftCallback(batches, every=10_000)] if with_callback else [timer]
        trainer = HfExtTrainer(
            model=model, args=args, train_dataset=data.train, data_collator=data.collator, callbacks=callbacks
        )
        trainer.train()
        # from the start of step 2 to the start of the last step: no warm-up, and not the measurement the
        # callback makes at the end of the last step
        return (timer.starts[-1] - timer.starts[1]) / (len(timer.starts) - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--cka-rows", type=int, default=4096, help="rows of the 1x streaming CKA size")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_args = ModelArguments(model_name_or_path="embedded:minilm")
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    data = prepare_data(
        DataArguments(dataset_name="builtin:topic", max_seq_length=args.max_length), tokenizer, "seq_cls"
    )
    model = load_model(model_args, tokenizer, data.labels).eval()
    texts = data.train.select(range(args.examples))
    batches = [
        data.collator([texts[i] for i in range(j, min(j + args.batch_size, args.examples))])
        for j in range(0, args.examples, args.batch_size)
    ]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(
        f"machine: {processor()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    print(f"set: {args.examples} examples, {tokens} tokens, batch {args.batch_size}, max length {args.max_length}")

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        load_model(model_args, tokenizer, data.labels),
        LoraConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS"),
    ).eval()
    with torch.no_grad():  # a trained-looking adapter, so that the measurement is not trivially exact
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)
    times: dict[str, list[float]] = {k: [] for k in ("plain", "dump", "lora_plain", "measure_mean", "measure_tokens")}
    with CpuShare() as share, tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            times["plain"].append(_plain(model, batches))
            out = Path(tmp) / f"dump-{repeat}"
            times["dump"].append(_timed(lambda out=out: dump_representations(model, batches, out, progress=False)))
            times["lora_plain"].append(_plain(lora, batches))
            times["measure_mean"].append(_timed(lambda: measure_drift(lora, batches, pooling="mean")))
            times["measure_tokens"].append(_timed(lambda: measure_drift(lora, batches, pooling="tokens")))
        dump_bytes = sum(f.stat().st_size for f in (Path(tmp) / "dump-0").iterdir())
    best = {k: _best(v) for k, v in times.items()}
    print(f"CPU share {share.share:.2f}")
    print("\n| variant | seconds (best) | ratio | target |\n| --- | --- | --- | --- |")
    print(f"| plain eval forward | {best['plain']:.3f} | 1.00 | |")
    print(
        f"| dump (tokens, float16, {dump_bytes / 2**20:.0f} MiB) | {best['dump']:.3f} | "
        f"throughput {best['plain'] / best['dump']:.2f} | >= 0.85 |"
    )
    print(f"| plain eval forward, LoRA model | {best['lora_plain']:.3f} | 1.00 | |")
    print(
        f"| measure_drift, LoRA on+off, mean | {best['measure_mean']:.3f} | "
        f"{best['measure_mean'] / best['lora_plain']:.2f} | <= 2.2 |"
    )
    print(
        f"| measure_drift, LoRA on+off, tokens | {best['measure_tokens']:.3f} | "
        f"{best['measure_tokens'] / best['lora_plain']:.2f} | |"
    )
    print("\nall repeats (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.3f}" for t in v) for k, v in times.items()))

    steps = {"without": [], "with": []}
    with CpuShare() as train_share:
        for _ in range(args.repeats):
            for key in ("without", "with"):
                steps[key].append(_train_steps(model_args, tokenizer, data, args.train_steps, key == "with", batches))
    print(f"\ntraining step, LoRA, batch 32 (CPU share {train_share.share:.2f}):")
    print(
        f"  no callback {_best(steps['without']):.4f} s, DriftCallback never due {_best(steps['with']):.4f} s, "
        f"ratio {_best(steps['with']) / _best(steps['without']):.3f} (target 1.0)"
    )
    print("  all repeats (s): " + "; ".join(f"{k} " + ", ".join(f"{t:.4f}" for t in v) for k, v in steps.items()))

    print("\nstreaming CKA, width 384:")
    print("| rows | streaming s | accumulator bytes | Gram formula bytes | Gram s |\n| --- | --- | --- | --- | --- |")
    for r in _streaming(384, args.cka_rows):
        gram = f"{r['gram_seconds']:.2f}" if r["gram_seconds"] is not None else "does not fit"
        print(f"| {r['rows']} | {r['seconds']:.2f} | {r['held_bytes']:,} | {r['gram_bytes']:,} | {gram} |")
    print(f"\n(available memory {_available_memory() / 2**30:.1f} GiB; pid {os.getpid()})")


if __name__ == "__main__":
    main()
