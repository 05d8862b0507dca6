"""hf_ext: research techniques for the Hugging Face Trainer.

Public names are importable from ``hf_ext`` directly; submodules load on first use so that
``hf-ext --help`` and light scripts do not pay for importing torch and transformers. The
``TYPE_CHECKING`` block below names the same exports for IDEs and type checkers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_EXPORTS = {
    "activations": [
        "InputRecorder",
        "InputStatistics",
        "collect_input_statistics",
        "compute_bases",
        "eigenbasis",
        "orthonormality_error",
    ],
    "config": [
        "DataArguments",
        "HfExtTrainingArguments",
        "ModelArguments",
        "given_keys",
        "parse_config",
        "run_record",
    ],
    "data": ["PreparedData", "prepare_data"],
    "heads.callbacks": ["HeadImportanceCallback"],
    "heads.config": ["HeadStudyArguments"],
    "heads.entropy": ["attention_entropy"],
    "heads.gates": ["HeadGates", "head_update_sizes", "mean_head_outputs"],
    "heads.importance": ["ablation_importance", "gradient_importance"],
    "heads.probe": ["fit_probe", "head_state", "restore_head"],
    "heads.pruning": ["prune_curve"],
    "heads.study": ["run_head_study"],
    "drift.analysis": ["analyze_run"],
    "drift.callbacks": ["DriftCallback"],
    "drift.config": ["DriftArguments"],
    "drift.measure": ["check_paired", "compare_dumps", "measure_drift"],
    "drift.metrics": ["CKAAccumulator", "DriftAccumulator", "LayerDrift", "linear_cka"],
    "drift.recorders": ["RepresentationRecorder"],
    "drift.shards": ["DumpReader", "dump_representations"],
    "drift.stats": ["bootstrap_interval", "paired_permutation_test"],
    "drift.study": ["run_drift_study"],
    "lora_null.callbacks": ["LoraNullCallback"],
    "lora_null.config": ["LoraNullArguments"],
    "lora_null.init": ["check_frozen_A", "initialize_lora_null_weights", "save_lora_null"],
    "lora_null.preservation": ["PreservationArguments", "run_preservation_study"],
    "lora_null.study": ["run_lora_null"],
    "lora_null.verify": ["verify_adapter"],
    "errors": [
        "ConfigError",
        "DataError",
        "FileFormatError",
        "HfExtError",
        "RunDirectoryError",
        "TrainingDivergedError",
        "WriteError",
        "exit_on_user_error",
    ],
    "io": ["load_tensors", "read_json", "save_tensors", "write_json"],
    "models": ["eval_mode", "load_model", "load_tokenizer", "model_device", "tiny_model"],
    "metrics": ["ClassificationScores"],
    "run_logger": ["LoggingCallback", "RunLogger"],
    "selective.config": ["SelectiveArguments"],
    "selective.inspect": ["inspect_graph"],
    "selective.prefix": ["NoGradPrefix", "attach_no_grad_prefix"],
    "selective.selection": ["resolve_train_layers", "select_trainable"],
    "selective.study": ["run_seq_cls"],
    "targets": ["AttentionModules", "find_attention", "find_blocks", "select_linear", "set_trainable"],
    "tasks": ["load_builtin_task"],
    "trainer": ["GradientCallback", "HfExtTrainer"],
    "tracking": ["HfExtMLflowCallback", "end_mlflow_run"],
    "warp.arms": ["control_masks"],
    "warp.callbacks": ["CoefficientDriftCallback", "ImportanceCallback", "LeafWeightCallback", "MaskedUpdateCallback"],
    "warp.config": ["WarpArguments"],
    "warp.importance": ["EmpiricalFisher", "ImportanceAccumulator", "build_masks", "make_accumulator", "top_k_masks"],
    "warp.layout": ["WarpLayout"],
    "warp.leaf": ["LeafReparameterization"],
    "warp.masking": ["MaskedUpdate"],
    "warp.reparam": ["coefficient_parameters", "merge", "merge_model", "reparameterize"],
    "warp.study": ["WarpRun", "run_warp_study"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from .activations import (
        InputRecorder,
        InputStatistics,
        collect_input_statistics,
        compute_bases,
        eigenbasis,
        orthonormality_error,
    )
    from .config import DataArguments, HfExtTrainingArguments, ModelArguments, given_keys, parse_config, run_record
    from .data import PreparedData, prepare_data
    from .drift.analysis import analyze_run
    from .drift.callbacks import DriftCallback
    from .drift.config import DriftArguments
    from .drift.measure import check_paired, compare_dumps, measure_drift
    from .drift.metrics import CKAAccumulator, DriftAccumulator, LayerDrift, linear_cka
    from .drift.recorders import RepresentationRecorder
    from .drift.shards import DumpReader, dump_representations
    from .drift.stats import bootstrap_interval, paired_permutation_test
    from .drift.study import run_drift_study
    from .errors import (
        ConfigError,
        DataError,
        FileFormatError,
        HfExtError,
        RunDirectoryError,
        TrainingDivergedError,
        WriteError,
        exit_on_user_error,
    )
    from .heads.callbacks import HeadImportanceCallback
    from .heads.config import HeadStudyArguments
    from .heads.entropy import attention_entropy
    from .heads.gates import HeadGates, head_update_sizes, mean_head_outputs
    from .heads.importance import ablation_importance, gradient_importance
    from .heads.probe import fit_probe, head_state, restore_head
    from .heads.pruning import prune_curve
    from .heads.study import run_head_study
    from .io import load_tensors, read_json, save_tensors, write_json
    from .lora_null.callbacks import LoraNullCallback
    from .lora_null.config import LoraNullArguments
    from .lora_null.init import check_frozen_A, initialize_lora_null_weights, save_lora_null
    from .lora_null.preservation import PreservationArguments, run_preservation_study
    from .lora_null.study import run_lora_null
    from .lora_null.verify import verify_adapter
    from .metrics import ClassificationScores
    from .models import eval_mode, load_model, load_tokenizer, model_device, tiny_model
    from .run_logger import LoggingCallback, RunLogger
    from .selective.config import SelectiveArguments
    from .selective.inspect import inspect_graph
    from .selective.prefix import NoGradPrefix, attach_no_grad_prefix
    from .selective.selection import resolve_train_layers, select_trainable
    from .selective.study import run_seq_cls
    from .targets import AttentionModules, find_attention, find_blocks, select_linear, set_trainable
    from .tasks import load_builtin_task
    from .tracking import HfExtMLflowCallback, end_mlflow_run
    from .trainer import GradientCallback, HfExtTrainer
    from .warp.arms import control_masks
    from .warp.callbacks import (
        CoefficientDriftCallback,
        ImportanceCallback,
        LeafWeightCallback,
        MaskedUpdateCallback,
    )
    from .warp.config import WarpArguments
    from .warp.importance import (
        EmpiricalFisher,
        ImportanceAccumulator,
        build_masks,
        make_accumulator,
        top_k_masks,
    )
    from .warp.layout import WarpLayout
    from .warp.leaf import LeafReparameterization
    from .warp.masking import MaskedUpdate
    from .warp.reparam import coefficient_parameters, merge, merge_model, reparameterize
    from .warp.study import WarpRun, run_warp_study


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hf_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
