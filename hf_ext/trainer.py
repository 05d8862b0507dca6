"""The Trainer subclass that hf_ext's callbacks and techniques compose into, and the base class of
callbacks that read gradients."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from . import distributed, tracking
from .errors import ConfigError, RunDirectoryError, TrainingDivergedError
from .io import read_json, write_json
from .models import check_checkpoint_weights, split_head_learning_rate
from .run_logger import LoggingCallback, print_run_locations


def checkpoint_dir(args, state) -> str:
    """The checkpoint directory of ``state.global_step`` (where a callback saves and, on resume, finds its state)."""
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


class CheckpointedHistory:
    """For callbacks whose ``history`` (a JSON-safe list) must survive a resume: written to
    ``<checkpoint>/<history_file>`` at every save (main process), read back by :meth:`restore_history`."""

    history_file: str
    history: list

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_json(Path(checkpoint_dir(args, state)) / self.history_file, self.history)

    def restore_history(self, args, state, lost: str) -> None:
        """Load the history saved with the checkpoint being resumed; ``lost`` says what is missing without it."""
        path = Path(checkpoint_dir(args, state)) / self.history_file
        if not path.is_file():
            raise RunDirectoryError(
                f"resuming at step {state.global_step} but {path} is missing: {lost} cannot be recovered; resume "
                "from a checkpoint this recipe saved, or start afresh"
            )
        self.history = read_json(path)


class GradientCallback(LoggingCallback):
    """A callback that reads gradients once per optimizer step, before clipping.

    :class:`HfExtTrainer` calls :meth:`on_gradients_ready` when the gradients are complete
    (accumulated and, under DDP, averaged) but not yet clipped; the Trainer's own
    ``on_pre_optimizer_step`` sees clipped gradients. Binding refuses FSDP and DeepSpeed with an error
    instead of measuring sharded gradients wrongly.
    """

    reads = "gradients"

    def bind(self, trainer: Trainer) -> None:
        if not isinstance(trainer, HfExtTrainer):
            raise TypeError(
                f"{type(self).__name__} needs hf_ext.HfExtTrainer (it reads gradients before clipping), "
                f"got {type(trainer).__name__}"
            )
        super().bind(trainer)

    def on_gradients_ready(self, args, state, control, *, model=None, grad_scale: float = 1.0, **kwargs) -> None:
        """Called once per optimizer step with complete, unclipped gradients; ``grad_scale`` is the
        fp16 loss scale they still carry (1.0 otherwise)."""


class HfExtTrainer(Trainer):
    """A ``transformers.Trainer`` that its callbacks can log through.

    - Every :class:`~hf_ext.run_logger.LoggingCallback` is bound (``callback.bind(trainer)``) when
      the trainer is built or when it is added later.
    - Every :class:`GradientCallback` gets ``on_gradients_ready`` once per optimizer step when the
      gradients are complete (accumulated and, under DDP, averaged) but not yet clipped.
    - :meth:`record_metrics` collects scalars between logging steps; they are averaged and merged
      into the next training log, so they reach TensorBoard at the same step as the loss.
    - The loss of a model whose loss ignores ``num_items_in_batch`` (sequence classification) is
      scaled as a per-batch mean. transformers 5 passes the item count to any model whose
      ``forward`` takes ``**kwargs`` and then skips the division by gradient-accumulation steps and
      multiplies by the number of processes, which doubles such a model's loss and gradients with
      two processes or two accumulation steps.
    - With ``"mlflow"`` in ``report_to``, :class:`~hf_ext.tracking.HfExtMLflowCallback` replaces
      transformers' ``MLflowCallback``: one run per trainer that stays open for the metrics of
      ``evaluate()`` after training, and :meth:`save_model` logs the saved model to it.
    - A run that fails before writing any file (a refused ``resume_from_checkpoint``, a refused
      configuration) leaves no empty ``output_dir`` behind: the directories this trainer created (the
      ``output_dir`` the Trainer makes when it is built, its parents, the TensorBoard directory) are
      removed again when they hold no file. Directories that existed before, and files, are never removed.
    - ``data_source`` (passed by ``**data.trainer_kwargs()``: what :func:`hf_ext.data.data_source` describes)
      is written to ``output_dir/data_source.json`` when training starts and logged to the MLflow run.
    """

    DATA_SOURCE_FILE = "data_source.json"

    def __init__(self, model=None, args=None, *rest, data_source: dict | None = None, **kwargs):
        self.data_source = data_source
        missing = [
            _missing_directories(args.output_dir if args is not None else None),
            _missing_directories(os.getenv("TENSORBOARD_LOGGING_DIR")),  # TensorBoardCallback's folder when set
        ]
        self._created_dirs: list[list[Path]] = []
        self._removed_output_dir = False
        try:
            super().__init__(model, args, *rest, **kwargs)
            # What this process makes: the Trainer makes output_dir where it saves; TensorBoard writes on rank 0.
            self._created_dirs = [
                missing[0] if self.args.should_save else [],
                missing[1] if self.is_world_process_zero() else [],
            ]
            self._finish_init()
        except BaseException:
            self._remove_created_empty_dirs()
            raise

    def _finish_init(self) -> None:
        """hf_ext's checks and set-up once ``Trainer.__init__`` has run."""
        if distributed.sharded_launcher(self.args) == "FSDP" and not self.is_fsdp_enabled:
            raise ConfigError(
                f"fsdp is set but accelerate runs FSDP only on GPUs: on {self.args.device.type} this run would "
                "silently train unsharded; drop fsdp/fsdp_config (or the FSDP accelerate config) here, or run on GPUs"
            )
        if self.model_accepts_loss_kwargs and not _loss_normalises_by_item_count(
            self.accelerator.unwrap_model(self.model)
        ):
            self.model_accepts_loss_kwargs = False
        self._recorded: dict[str, list[float]] = defaultdict(list)
        self._nonfinite_losses: torch.Tensor | int = 0
        tracking.install(self)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                # transformers names the folder only in on_train_begin: an evaluate() first would write to ./runs
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())
            self._bind(callback)

    def _bind(self, callback: TrainerCallback) -> None:
        if isinstance(callback, LoggingCallback):
            callback.bind(self)

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        super().add_callback(callback)
        tracking.install(self)
        self._bind(self.callback_handler.callbacks[-1])

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` means the last checkpoint in ``output_dir``,
        and a missing checkpoint is a :class:`~hf_ext.errors.RunDirectoryError` that says what to do.

        If it raises before any file was written, the directories this trainer created are removed again
        (see the class docstring): a failed start leaves no empty ``output_dir``."""
        if self._removed_output_dir and self.args.should_save:  # an earlier train() failed: as Trainer.__init__ does
            os.makedirs(self.args.output_dir, exist_ok=True)
            self._removed_output_dir = False
        try:
            checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
            if self.data_source is not None and self.args.should_save:
                write_json(Path(self.args.output_dir) / self.DATA_SOURCE_FILE, self.data_source)
            return super().train(checkpoint, *args, **kwargs)
        except BaseException:
            self._remove_created_empty_dirs()
            raise

    def _remove_created_empty_dirs(self) -> None:
        """After a failure: remove the directories this trainer created (``output_dir`` and the parents the Trainer
        made for it, the TensorBoard directory when set apart) if they hold no file, with every empty directory
        in them. A tree that holds any file (or link) is left whole; directories that existed before are kept."""
        for index, created in enumerate(self._created_dirs):
            if not created or not _holds_only_directories(created[0]):
                continue
            _remove_empty_tree(created[0])
            for parent in created[1:]:
                try:
                    parent.rmdir()
                except OSError:
                    break
            if index == 0 and not created[0].exists():
                self._removed_output_dir = True

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; with ``report_to`` MLflow, a model saved by the caller (not a checkpoint)
        is also logged to the trainer's MLflow run under ``model/`` (the files it wrote directly into
        ``output_dir``, without ``training_args.bin``)."""
        directory = output_dir if output_dir is not None else self.args.output_dir
        before = tracking.file_times(directory) if tracking.tracking_callback(self) is not None else {}
        super().save_model(output_dir, _internal_call)
        if not _internal_call:
            tracking.log_saved_model(self, directory, before)

    def train_and_report(self, splits: dict, resume_from_checkpoint: str | bool | None = None):
        """A recipe's ending: train, save the model to ``output_dir``, print and save the training metrics and
        :meth:`report_splits` ``splits``, then print where the outputs, logs and tracking run are; returns the
        ``TrainOutput``."""
        result = self.train(resume_from_checkpoint=resume_from_checkpoint)
        self.save_model()
        self.log_metrics("train", result.metrics)
        self.save_metrics("train", result.metrics)
        self.report_splits(splits)
        print_run_locations(self)
        return result

    def end_tracking(self) -> None:
        """End this trainer's MLflow run now (it stays open after training for metrics logged later)."""
        tracking.end_mlflow_run(self)

    def report_splits(self, splits: dict) -> dict[str, dict[str, float]]:
        """Evaluate each dataset of ``{"eval": validation, "test": test}`` (``None`` skipped), print its metrics
        and save them as ``<split>_results.json``; returns the metrics by split."""
        results = {}
        for split, dataset in splits.items():
            if dataset is not None:
                results[split] = self.evaluate(dataset, metric_key_prefix=split)
                self.log_metrics(split, results[split])
                self.save_metrics(split, results[split])
                self._print_power(split, dataset, results[split])
        return results

    def _print_power(self, split: str, dataset, metrics: dict) -> None:
        """What an accuracy on this split can resolve, beside its chance level (classifiers only)."""
        accuracy = metrics.get(f"{split}_accuracy")
        if (
            accuracy is None
            or "labels" not in getattr(dataset, "column_names", ())
            or not self.is_world_process_zero()
        ):
            return
        from .stats import accuracy_power, majority_share  # scipy: only when a split is reported

        labels = dataset["labels"]
        if len(labels) and not isinstance(labels[0], list):
            print(
                f"power ({split}): chance {majority_share(labels):.3f} (majority class); "
                f"{accuracy_power(accuracy, len(labels))}",
                flush=True,
            )

    def _checkpoint_to_resume(self, value: str | bool | None) -> str | None:
        if value is None or value is False:
            return None
        if value is True:
            out = self.args.output_dir
            value = get_last_checkpoint(out) if os.path.isdir(out) else None
            if value is None:
                raise RunDirectoryError(
                    f"resume_from_checkpoint=true but {out} holds no checkpoint-<step> directory; remove the key to "
                    "start afresh, or name a checkpoint directory (checkpoints need save_strategy 'steps' or 'epoch')"
                )
        state = os.path.join(value, TRAINER_STATE_NAME)
        if not os.path.isfile(state):
            raise RunDirectoryError(
                f"resume_from_checkpoint={value!r} is not a checkpoint (no {TRAINER_STATE_NAME}); name a "
                "checkpoint-<step> directory of an earlier run, or true for the last one in output_dir"
            )
        self._check_same_model(value)
        check_checkpoint_weights(value, self.accelerator.unwrap_model(self.model))
        step, planned = json.loads(Path(state).read_text())["global_step"], self._planned_steps()
        if planned is not None and step >= planned:
            raise RunDirectoryError(
                f"{value} is at step {step} and this run has {planned} steps: nothing is left to train, and resuming "
                "would only rewrite the results; raise max_steps or num_train_epochs to continue it"
            )
        return value

    def _check_same_model(self, checkpoint: str) -> None:
        """A checkpoint of another model cannot be resumed (its weights and optimizer state do not fit)."""
        path = Path(checkpoint) / "config.json"
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        if config is None or not path.is_file():
            return
        saved, current = json.loads(path.read_text()), config.to_dict()
        keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_labels")
        differ = [
            f"{k} {saved.get(k)} vs {current.get(k)}" for k in keys if k in saved and saved.get(k) != current.get(k)
        ]
        if differ:
            raise RunDirectoryError(
                f"{checkpoint} was written by another model ({', '.join(differ)}, checkpoint vs this run); resume "
                "with the model that wrote it, or start afresh without resume_from_checkpoint"
            )

    def _planned_steps(self) -> int | None:
        """The optimizer steps this run will take, as the Trainer counts them (None if the data has no length)."""
        if self.args.max_steps > 0:
            return self.args.max_steps
        try:
            batches = len(self.get_train_dataloader())
        except TypeError:
            return None
        per_epoch = max(-(-batches // self.args.gradient_accumulation_steps), 1)
        return math.ceil(self.args.num_train_epochs * per_epoch)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the head's parameters in groups of their own at ``head_learning_rate``
        when the arguments set it."""
        optimizer = super().create_optimizer(model)
        head_learning_rate = getattr(self.args, "head_learning_rate", None)
        if head_learning_rate is not None:
            model = self.model if model is None else model
            if not split_head_learning_rate(optimizer, model, head_learning_rate) and not any(
                g.get("name") == "head" for g in optimizer.param_groups
            ):
                raise ConfigError(
                    f"head_learning_rate={head_learning_rate} but {type(model).__name__} has no trainable "
                    "classifier head (classifier / score / pooler): unset head_learning_rate"
                )
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        warmup = self.args.get_warmup_steps(num_training_steps)
        schedule = getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)
        if 0 < num_training_steps <= warmup and schedule != "constant":
            raise ConfigError(
                f"warmup_steps={self.args.warmup_steps} covers all {num_training_steps} optimizer step(s) of this "
                "run, so the learning rate never leaves warm-up (a single step runs at learning rate 0); lower "
                "warmup_steps, or give a ratio below 1 (e.g. 0.1)"
            )
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._nonfinite_losses = self._nonfinite_losses + (~torch.isfinite(loss)).sum()  # no sync until a log
        if self.accelerator.sync_gradients:
            scale = self.gradient_scale()
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, GradientCallback):
                    callback.on_gradients_ready(self.args, self.state, self.control, model=model, grad_scale=scale)
        return loss

    def gradient_scale(self) -> float:
        """The loss scale the gradients carry before clipping unscales them (fp16 on CUDA), else 1.0."""
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def record_metrics(self, metrics: dict[str, float]) -> None:
        """Queue scalars for the next training log (averaged if recorded several times)."""
        for name, value in metrics.items():
            self._recorded[name].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_eval = any(key.startswith(("eval_", "test_")) for key in logs)
        if "loss" in logs or "train_loss" in logs:  # the Trainer's own training logs, on every rank
            self._refuse_nonfinite_losses()
        if self._recorded and not is_eval:
            logs = {**logs, **{name: sum(v) / len(v) for name, v in self._recorded.items()}}
            self._recorded.clear()
        super().log(logs, start_time)

    def _refuse_nonfinite_losses(self) -> None:
        """Raise if any rank saw a NaN or infinite training loss since training began. The Trainer's
        ``logging_nan_inf_filter`` replaces such losses by the running mean, so a diverged run would log finite
        losses and save a NaN model."""
        count = torch.as_tensor(self._nonfinite_losses, device=self.args.device).reshape(1).long()
        distributed.all_reduce_sum_([count])
        if count.item():
            raise TrainingDivergedError(
                f"{count.item()} training batch(es) up to step {self.state.global_step} had a NaN or infinite loss "
                "(before logging_nan_inf_filter hid them): the model diverged; lower learning_rate, keep "
                "max_grad_norm on, use bf16 instead of fp16, or check the data (labels out of range, empty texts)"
            )


def _missing_directories(path: str | os.PathLike | None) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, ``path`` first: what ``os.makedirs`` would create."""
    if not path:
        return []
    missing = []
    current = Path(path).expanduser().absolute()
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def _holds_only_directories(top: Path) -> bool:
    """True if ``top`` is a directory (not a link) and nothing below it is a file or a link."""
    if top.is_symlink() or not top.is_dir():
        return False

    def unreadable(err: OSError) -> None:
        raise err

    try:
        for folder, subfolders, files in os.walk(top, onerror=unreadable):
            if files or any(os.path.islink(os.path.join(folder, name)) for name in subfolders):
                return False
    except OSError:
        return False
    return True


def _remove_empty_tree(top: Path) -> None:
    """``rmdir`` every directory below ``top``, deepest first, then ``top``; one that is not empty stays."""
    for folder, _, _ in os.walk(top, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _loss_normalises_by_item_count(model) -> bool:
    """True for causal LMs, whose loss divides a token sum by ``num_items_in_batch`` when given."""
    base = getattr(model, "get_base_model", lambda: model)()
    return type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
