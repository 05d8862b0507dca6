"""MLflow experiment tracking for every recipe: ``"report_to": ["tensorboard", "mlflow"]`` in the config.

:class:`HfExtMLflowCallback` takes the place of transformers' ``MLflowCallback`` in every
:class:`~hf_ext.trainer.HfExtTrainer` (one MLflow run per Trainer). On top of what transformers logs
(``TrainingArguments`` and the model config as params, the training log as metrics) it logs

- params: every key of the recipe's other argument dataclasses (``ModelArguments``, ``DataArguments``,
  the study's); a key that the Trainer's params already hold gets the dataclass name as prefix;
- the artifact ``config/resolved_config.json``: every key of every dataclass the recipe parsed, defaults
  included (the ``run_record`` that parsing attaches to the arguments); a Trainer whose arguments were not
  parsed logs ``args.to_dict()``;
- tags ``hf_ext.recipe``, ``hf_ext.config_file``, ``hf_ext.version``, ``hf_ext.git_commit`` and
  ``hf_ext.git_dirty`` (git run in the recipe's directory; ``unknown`` outside a repository);
- the files ``trainer.save_model()`` writes directly into a directory, under ``model/``.

Run lifecycle. transformers ends its run in ``on_train_end``, after which the ``trainer.evaluate()``
calls of a recipe would make mlflow's fluent API silently open a second run. Here the run stays open
after training, every metric and artifact goes to the run by id (never to "whatever run is active"),
and the run ends when the next Trainer's run starts, when :func:`end_mlflow_run` is called, or when
the process exits (mlflow's ``atexit`` hook). Runs that hf_ext did not start (a user's own
``mlflow.start_run()``) are logged into and never ended. Only the main process talks to MLflow.

The store: ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` when set, else mlflow's default
(mlflow 3: ``sqlite:///mlflow.db`` in the working directory, artifacts in ``./mlruns``; no server).
An ``http(s)://`` tracking server is asked once, when the arguments are parsed, whether it answers
(:func:`mlflow_unavailable_reason`): mlflow itself would retry an unreachable server for minutes.
mlflow is imported only inside functions, so ``import hf_ext`` works without it. This module imports
nothing of ``hf_ext.config`` (which imports it).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import numbers
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from transformers.integrations import MLflowCallback

from .version import __version__

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.getLogger(__name__)

TAG_PREFIX = "hf_ext."
MODEL_ARTIFACT_PATH = "model"
CONFIG_ARTIFACT = "config/resolved_config.json"
DATA_SOURCE_ARTIFACT = "config/data_source.json"
SKIPPED_MODEL_FILES = frozenset({"training_args.bin"})  # pickled TrainingArguments: not part of the model
SERVER_PROBE_TIMEOUT_S = 3.0  # how long an http(s) tracking server gets to answer when the arguments are parsed

# Runs this process started through HfExtMLflowCallback and has not ended yet.
_OPEN_RUNS: set[str] = set()


def mlflow_unavailable_reason() -> str | None:
    """Why ``report_to: ["mlflow"]`` cannot work in this environment, with the fix; ``None`` when it can.

    Checked the way transformers checks (``find_spec`` and ``DISABLE_MLFLOW_INTEGRATION``), so
    :class:`~hf_ext.config.HfExtTrainingArguments` refuses the config before any model loads instead
    of transformers' ``RuntimeError`` when the Trainer is built. A ``sqlite:///`` store must be in a
    writable folder, and an ``http(s)://`` ``MLFLOW_TRACKING_URI`` must answer one request within
    :data:`SERVER_PROBE_TIMEOUT_S` seconds (mlflow would retry it for minutes); other stores are not probed.
    """
    try:
        missing = importlib.util.find_spec("mlflow") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        return "mlflow is not installed; pip install 'hf_ext[mlflow]' (or remove \"mlflow\" from report_to)"
    store = _sqlite_store_problem(os.getenv("MLFLOW_TRACKING_URI", ""))
    if store is not None:
        return store
    if os.getenv("DISABLE_MLFLOW_INTEGRATION", "FALSE").upper() == "TRUE":
        return (
            "DISABLE_MLFLOW_INTEGRATION=TRUE turns transformers' MLflow integration off; unset it "
            '(or remove "mlflow" from report_to)'
        )
    return _server_problem(os.getenv("MLFLOW_TRACKING_URI", ""))


def _sqlite_store_problem(uri: str) -> str | None:
    """Why a ``sqlite:///`` tracking store cannot be written (mlflow would retry for minutes, then fail)."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///") :]).expanduser().absolute().parent
    if folder.is_dir() and os.access(folder, os.W_OK):
        return None
    problem = "does not exist" if not folder.exists() else "cannot be written"
    return f"MLFLOW_TRACKING_URI={uri}: the folder {folder} {problem}; point it at a writable path"


def _server_problem(uri: str, timeout: float = SERVER_PROBE_TIMEOUT_S) -> str | None:
    """Why an ``http(s)://`` tracking server cannot be used: it did not answer one GET of its ``/health`` page
    within ``timeout`` seconds (any HTTP answer counts, an error status or a TLS complaint included: the server
    is there, and mlflow reports the rest itself). ``None`` for other URIs and for a server that answered."""
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    outcome: list[str | None] = []
    probe = threading.Thread(target=lambda: outcome.append(_probe(uri, timeout)), daemon=True)
    probe.start()
    probe.join(timeout + 1.0)  # the request's timeout does not bound name resolution: this does
    problem = outcome[0] if outcome else f"no answer within {timeout:g} s"
    if problem is None:
        return None
    return (
        f"MLFLOW_TRACKING_URI={_without_password(uri)} does not answer ({problem}); start the MLflow server "
        "(mlflow server --host HOST --port PORT) or fix the URI, or unset MLFLOW_TRACKING_URI to log to a local "
        'store (sqlite:///mlflow.db), or remove "mlflow" from report_to'
    )


def _probe(uri: str, timeout: float) -> str | None:
    """One GET of ``<uri>/health`` (through the proxies the environment names, as mlflow's requests go);
    ``None`` when anything answered, else what went wrong, in a few words."""
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        requests.get(url, timeout=timeout, allow_redirects=False).close()
    except requests.exceptions.SSLError:
        return None  # something answered; mlflow reports certificate problems (and honours its TLS settings)
    except requests.exceptions.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.exceptions.RequestException as err:
        return _short_reason(err)
    return None


def _short_reason(err: Exception) -> str:
    """The innermost cause of a requests error, e.g. ``ConnectionRefusedError: [Errno 111] Connection refused``."""
    seen = {id(err)}
    while True:
        inner = err.__cause__ or err.__context__ or next((a for a in err.args if isinstance(a, Exception)), None)
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        err = inner
    reason = getattr(err, "reason", None)  # urllib3's NewConnectionError and MaxRetryError carry the socket error
    text = str(reason if isinstance(reason, Exception) else err)
    text = re.sub(r"^<[^>]*>:\s*", "", text).splitlines()[0] if text else type(err).__name__
    return text[:200]


def _without_password(uri: str) -> str:
    """``uri`` with the password of ``user:password@host`` replaced by ``***`` (the reason is printed)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class HfExtMLflowCallback(MLflowCallback):
    """transformers' ``MLflowCallback`` with one run per Trainer that stays open for the metrics logged
    after training, plus the recipe's params, tags and resolved config (see the module docstring).

    :class:`~hf_ext.trainer.HfExtTrainer` puts it in place of ``MLflowCallback`` when ``report_to``
    includes ``"mlflow"``. After setup (at the start of training, or at the first log or save),
    ``run_id`` and ``tracking_uri`` name the run on the main process (``None`` on the others).
    """

    def __init__(self):
        super().__init__()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.tracking_uri: str | None = None
        self.data_source: dict | None = None  # set by install() from the trainer
        self._client = None

    def setup(self, args, state, model):
        if state.is_world_process_zero:
            _end_active_hf_ext_run()  # the previous Trainer's run: a new one begins
        super().setup(args, state, model)
        if not state.is_world_process_zero:
            return
        run = self._ml_flow.active_run()
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        self.tracking_uri = self._ml_flow.get_tracking_uri()
        self._client = self._ml_flow.tracking.MlflowClient(self.tracking_uri)
        if self._auto_end_run:
            _OPEN_RUNS.add(self.run_id)
            if not args.run_name:  # else mlflow draws a name from the (seeded) global RNG: the same every run
                self._client.set_tag(self.run_id, "mlflow.runName", Path(args.output_dir).name)
        self._log_record(_record_of(args), args, model)

    def _log_record(self, record: dict[str, Any], args, model) -> None:
        from mlflow.entities import Param, RunTag

        taken = set(args.to_dict())
        if getattr(model, "config", None) is not None:
            taken |= set(model.config.to_dict())
        params = {}
        for kind, values in record["resolved"].items():
            if kind == type(args).__name__:
                continue  # the Trainer's own arguments: logged by MLflowCallback.setup
            for key, value in values.items():
                name = key if key not in taken and key not in params else f"{kind}.{key}"
                if len(str(value)) > self._MAX_PARAM_VAL_LENGTH:
                    logger.warning(
                        "MLflow param %s is longer than MLflow allows; it is only in %s", name, CONFIG_ARTIFACT
                    )
                    continue
                params[name] = str(value)
        commit, dirty = git_state(_source_directory(record.get("recipe_file")))
        tags = {
            "recipe": record.get("recipe") or "unknown",
            "config_file": record.get("config_file") or "unknown",
            "version": __version__,
            "git_commit": commit,
            "git_dirty": dirty,
        }
        items = list(params.items())
        batch = self._MAX_PARAMS_TAGS_PER_BATCH
        for start in range(0, len(items), batch):
            self._client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[start : start + batch]])
        self._client.log_batch(self.run_id, tags=[RunTag(TAG_PREFIX + k, str(v)) for k, v in tags.items()])
        self._client.log_dict(self.run_id, record["resolved"], CONFIG_ARTIFACT)
        if self.data_source is not None:
            self._client.log_dict(self.run_id, self.data_source, DATA_SOURCE_ARTIFACT)
            if "license" in self.data_source:
                self._client.set_tag(self.run_id, TAG_PREFIX + "data_license", self.data_source["license"])

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        """Log numbers to this Trainer's run by id: after ``on_train_end`` (``trainer.evaluate``) or after the
        run was ended, transformers' fluent ``mlflow.log_metrics`` would open a new run instead."""
        if not self._initialized:
            self.setup(args, state, model)
        if not state.is_world_process_zero or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for key, value in logs.items():
            if hasattr(value, "numel") and value.numel() == 1:
                value = value.item()
            if isinstance(value, numbers.Real):  # numpy scalars too
                name = re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", key)  # as MLflowCallback sanitizes names
                metrics.append(Metric(name, float(value), now, state.global_step))
            else:
                logger.debug("not an MLflow metric (not a number): %s=%r", key, value)
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def on_train_end(self, args, state, control, **kwargs):
        """Keep the run open: a recipe's ``trainer.evaluate()`` after training logs into it."""

    def log_model_files(self, directory: str | os.PathLike, before: dict[str, int] | None = None) -> list[str]:
        """Log the files directly in ``directory`` (not its subdirectories, not ``training_args.bin``) under
        ``model/``, only those new or changed since ``before`` (:func:`file_times`) when given; returns their names."""
        if self.run_id is None:
            return []
        now = file_times(directory)
        names = sorted(n for n, t in now.items() if n not in SKIPPED_MODEL_FILES and (before or {}).get(n) != t)
        for name in names:
            self._client.log_artifact(self.run_id, str(Path(directory) / name), MODEL_ARTIFACT_PATH)
        return names

    def end_run(self, status: str = "FINISHED") -> None:
        """End this Trainer's run if hf_ext started it and it is still open (a user's own run is left alone)."""
        if self.run_id is None or self.run_id not in _OPEN_RUNS:
            return
        _flush(self._ml_flow)
        active = self._ml_flow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self._ml_flow.end_run(status)
        else:
            self._client.set_terminated(self.run_id, status)
        _OPEN_RUNS.discard(self.run_id)

    def __del__(self):
        # MLflowCallback.__del__ ends whatever run is active when the callback is collected, which may be
        # the next Trainer's run by then. Runs end when the next one starts, by end_mlflow_run, or at exit.
        pass


def _record_of(args) -> dict[str, Any]:
    """The run record that parsing attached to ``args`` (``args.run_record.to_dict()``: recipe, recipe_file,
    config_file, resolved); for arguments built in code, only the Trainer's own arguments as resolved."""
    record = getattr(args, "run_record", None)
    if record is not None:
        return record.to_dict()
    return {
        "recipe": "unknown",
        "recipe_file": None,
        "config_file": None,
        "resolved": {type(args).__name__: json.loads(json.dumps(args.to_dict(), default=str))},
    }


def _end_active_hf_ext_run(status: str = "FINISHED") -> None:
    mlflow = sys.modules.get("mlflow")
    active = mlflow.active_run() if mlflow is not None else None
    if active is not None and active.info.run_id in _OPEN_RUNS:
        _flush(mlflow)
        mlflow.end_run(status)
        _OPEN_RUNS.discard(active.info.run_id)


def _flush(mlflow) -> None:
    flush = getattr(mlflow, "flush_async_logging", None)  # transformers logs the Trainer's params asynchronously
    if flush is not None:
        flush()


def tracking_callback(trainer: Trainer) -> HfExtMLflowCallback | None:
    """The trainer's :class:`HfExtMLflowCallback`, or ``None`` when it does not report to MLflow."""
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, HfExtMLflowCallback)), None)


def install(trainer: Trainer) -> None:
    """Put :class:`HfExtMLflowCallback` in place of every plain ``MLflowCallback`` of ``trainer``."""
    callbacks = trainer.callback_handler.callbacks
    for index, callback in enumerate(callbacks):
        if type(callback) is MLflowCallback:
            callbacks[index] = HfExtMLflowCallback()
        if isinstance(callbacks[index], HfExtMLflowCallback):
            callbacks[index].data_source = getattr(trainer, "data_source", None)


def file_times(directory: str | os.PathLike) -> dict[str, int]:
    """``{file name: modification time in ns}`` of the files directly in ``directory`` (empty if it is absent)."""
    path = Path(directory)
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir() if p.is_file()} if path.is_dir() else {}


def log_saved_model(trainer: Trainer, directory: str | os.PathLike, before: dict[str, int] | None = None) -> list[str]:
    """After ``trainer.save_model(directory)``: log the files it wrote (new or changed since ``before``) to the
    trainer's run (main process only), so results or weights an earlier run left there are not taken for it."""
    callback = tracking_callback(trainer)
    if callback is None or not trainer.is_world_process_zero():
        return []
    if not callback._initialized:  # saved before any training or log: the run starts now
        callback.setup(trainer.args, trainer.state, trainer.model)
    return callback.log_model_files(directory, before)


def end_mlflow_run(trainer: Trainer | None = None, status: str = "FINISHED") -> None:
    """End the MLflow run hf_ext started for ``trainer`` (``None``: the active run, if hf_ext started it).

    Optional: a run also ends when the next Trainer's run starts and when the process exits. Metrics
    or models logged through the trainer afterwards still go to its (ended) run, never to a new one.
    """
    if trainer is None:
        if "mlflow" in sys.modules:
            _end_active_hf_ext_run(status)
        return
    callback = tracking_callback(trainer)
    if callback is not None:
        callback.end_run(status)


def run_location_lines(trainer: Trainer) -> list[str]:
    """``print_run_locations``'s MLflow lines: how to browse the store, and the run id."""
    callback = tracking_callback(trainer)
    if callback is None or callback.run_id is None:
        return []
    uri = display_uri(callback.tracking_uri)
    browse = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    return [f"mlflow:      {browse}", f"mlflow run:  {callback.run_id} (experiment {callback.experiment_id})"]


def display_uri(uri: str) -> str:
    """A tracking URI that works from any directory: relative sqlite and file paths made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return "file://" + os.path.abspath(uri[len("file:") :])
    if "://" not in uri and not uri.startswith("file:"):
        return os.path.abspath(uri)
    return uri


def _source_directory(recipe_file: str | None) -> str:
    """Where to ask git: the recipe's directory, else the main script's, else the working directory."""
    if recipe_file:
        return os.path.dirname(recipe_file)
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.dirname(os.path.abspath(main)) if main else os.getcwd()


@functools.lru_cache(maxsize=16)
def git_state(directory: str) -> tuple[str, str]:
    """``(commit, dirty)`` of the git checkout holding ``directory``: ``git rev-parse HEAD`` and ``"true"`` /
    ``"false"`` from ``git status --porcelain``; ``("unknown", "unknown")`` outside a repository or without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=30, check=False
        )
        if head.returncode != 0:
            return "unknown", "unknown"
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=directory, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"
    dirty = "unknown" if status.returncode != 0 else str(bool(status.stdout.strip())).lower()
    return head.stdout.strip(), dirty
