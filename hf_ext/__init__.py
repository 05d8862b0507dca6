"""hf_ext: research techniques for the Hugging Face Trainer.

Public names are importable from ``hf_ext`` directly; submodules load on first use so that
``hf-ext --help`` and light scripts do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "activations": ["InputRecorder", "InputStatistics", "collect_input_statistics", "eigenbasis"],
    "callbacks": ["CoefficientDriftCallback", "ImportanceCallback", "MaskedUpdateCallback"],
    "config": ["ConfigError", "DataArguments", "ModelArguments", "parse_config"],
    "data": ["PreparedData", "prepare_data"],
    "heads": ["HeadGates", "head_update_sizes"],
    "importance": ["ImportanceAccumulator", "build_masks", "top_k_masks"],
    "io": ["FileFormatError", "load_tensors", "read_json", "save_tensors", "write_json"],
    "masking": ["MaskedUpdate"],
    "models": ["load_model", "load_tokenizer", "tiny_model"],
    "reparam": ["coefficient_parameters", "compute_bases", "merge", "merge_model", "reparameterize"],
    "run_logger": ["LoggingCallback", "RunLogger"],
    "targets": ["AttentionModules", "find_attention", "find_blocks", "select_linear"],
    "tasks": ["load_builtin_task"],
    "trainer": ["HfExtTrainer"],
    "warp": ["WarpArguments", "WarpRun", "run_study"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hf_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
