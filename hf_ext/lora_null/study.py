"""The LoRA-Null recipe: build the adapter, verify it at init, train, verify again, compare.

In ``output_dir``: ``adapter_init/`` (the adapter right after initialisation, with ``lora_null_init.json``),
``verify_init.json``, the Trainer's outputs and TensorBoard run (``lora_null/<metric>`` at step 0, every
evaluation and the end), ``verify_trained.json`` and ``adapter/``: loadable with plain peft on the original
base model (for ``null_projection`` a rank-2r standard LoRA, converted by :func:`save_lora_null`).
"""

from __future__ import annotations

from pathlib import Path

from .. import distributed
from ..config import DataArguments
from ..data import load_model_and_data
from ..errors import ConfigError, DataError
from ..io import write_json
from ..outputs import check_output_dir
from ..run_logger import print_run_locations
from ..texts import load_texts, text_batches
from ..trainer import HfExtTrainer
from .callbacks import LoraNullCallback
from .config import LoraNullArguments
from .init import save_lora_null
from .plan import CALIBRATION_BATCH, LAUNCHER_CHECK
from .verify import format_comparison, format_verification, save_verification


def calibration_batches(args: LoraNullArguments, data_args: DataArguments, tokenizer, data):
    """``calib_samples`` texts from ``calib_dataset`` (or the training data) as padded batches."""
    max_length = args.calib_max_length or data_args.max_seq_length
    if args.calib_dataset is None:
        column = data_args.text_column if data_args.text_column in data.raw["train"].column_names else None
        if column is None:
            raise ConfigError("calib_dataset is not set and the training data has no text column: set calib_dataset")
        texts = [str(t) for t in list(data.raw["train"][column])[: args.calib_samples]]
    else:
        try:
            _, texts = load_texts(
                args.calib_dataset,
                split=args.calib_split,
                column=args.calib_text_column,
                limit=args.calib_samples,
                option="calib_text_column",
            )
        except (ConfigError, DataError) as err:
            raise type(err)(f"calib_dataset={args.calib_dataset!r}: {err}") from None
    return text_batches(tokenizer, texts, batch_size=CALIBRATION_BATCH, max_length=max_length)


def prepare_run(
    model_args, data_args, args: LoraNullArguments, training_args, finished: str, launcher_check=LAUNCHER_CHECK
):
    """What both LoRA-Null recipes start with: ``(output_dir, tokenizer, data, base model)``, the launcher
    (``launcher_check``: who refuses, what it reads whole; see :func:`hf_ext.distributed.check_launcher`), the
    output_dir and the adapter targets checked before any work."""
    distributed.check_launcher(training_args, *launcher_check)
    root = Path(training_args.output_dir)
    check_output_dir(
        root,
        finished=[finished],
        overwrite=getattr(training_args, "overwrite_output_dir", False),
        resuming=bool(training_args.resume_from_checkpoint),
    )
    tokenizer, data, model = load_model_and_data(model_args, data_args, seed=training_args.seed)
    args.check_targets(model)
    return root, tokenizer, data, model


def verification_batches(data, samples: int, batch_size: int = 32) -> list[dict]:
    """The first ``samples`` validation examples as collated batches: what :class:`LoraNullCallback` verifies on."""
    chosen = data.validation.select(range(min(samples, len(data.validation))))
    return [
        data.collator([chosen[i] for i in range(start, min(start + batch_size, len(chosen)))])
        for start in range(0, len(chosen), batch_size)
    ]


def save_initial_adapter(model, init, root: Path) -> None:
    """The adapter before any step and its null-space record, in ``root/adapter_init`` (main process only)."""
    if distributed.is_main_process():
        model.save_pretrained(str(root / "adapter_init"))
        init.save(root / "adapter_init")


def report_lora_null(trainer: HfExtTrainer, callback: LoraNullCallback, init, root: Path) -> dict[str, float]:
    """After training: evaluate, save the metrics, the verification at init and after training, the adapter
    (converted back to rank r for ``null_projection``) and print the comparison; returns the task metrics."""
    metrics = trainer.evaluate()
    if distributed.is_main_process():
        write_json(root / "metrics.json", metrics)
        model = trainer.accelerator.unwrap_model(trainer.model)
        initial, trained = callback.history[0]["result"], callback.history[-1]["result"]
        save_verification(initial, root / "verify_init.json")
        save_verification(trained, root / "verify_trained.json")
        projection = init.mode == "null_projection"
        save_lora_null(model, root / "adapter", initial_adapter=root / "adapter_init" if projection else None)
        if not projection:  # the converted rank-2r adapter of null_projection has no null-space record
            init.save(root / "adapter")
        print(f"\nverification at init:\n{format_verification(initial)}", flush=True)
        print(f"\nverification after training:\n{format_verification(trained)}", flush=True)
        print(f"\ninit vs trained (means over layers):\n{format_comparison(initial, trained)}", flush=True)
        print(f"\ntask metrics after training: {metrics}", flush=True)
    distributed.barrier()
    print_run_locations(trainer, adapter=str(root / "adapter"))
    return metrics
