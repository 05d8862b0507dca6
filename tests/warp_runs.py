"""A WaRP run on the embedded MiniLM shared by the tests (conftest's ``bert_run``), and helpers to copy
and tamper with run directories (test helper)."""

import json
import shutil

import torch
from recipes_util import run_recipe

from hf_ext.io import load_tensors, save_tensors

# The shipped config on a small share of the template tasks: one keep_ratio and layout (arm names without
# sweep suffixes), the prototype head, the outside safety check on corpus:harmful_vs_benign.
MINILM = (
    "warp_minilm.json",
    'targets=["layer.[4-5].output.dense"]',
    "dataset_name=builtin:sentiment",
    "keep_ratios=null",
    "mask_layouts=null",
    "learning_rate=0.001",
    "seeds=1",
    "safety_epochs=1",
    "num_train_epochs=1",
    "plain_learning_rates=[0.001,0.0001]",
    "full_learning_rates=[0.0001]",
    "max_train_samples=512",
    "max_eval_samples=96",
    "warmup_steps=0",
    "logging_steps=2",
    "eval_strategy=steps",
    "eval_steps=12",
)
ARMS = ["phase3", "phase3_none", "phase3_random", "phase3_eigenvalue", "plain", "plain_lr0.0001", "full_lr0.0001"]
TINY_LLAMA = (
    "warp_tiny_llama.json",
    "mask_controls=[]",
    "max_train_samples=256",
    "max_eval_samples=64",
    "logging_steps=2",
    "warmup_steps=0",
)
PHASE_FILES = [
    "config.json",
    "phase1/basis.safetensors",
    "phase1/metadata.json",
    "phase2/model/config.json",
    "phase2/importance.safetensors",
    "phase2/masks.safetensors",
    "phase2/metadata.json",
    "phase3/coefficients.safetensors",
    "phase3_random/masks.safetensors",
    "phase3_eigenvalue/coefficients.safetensors",
    *(f"{arm}/{name}" for arm in ARMS for name in ("delta.safetensors", "metadata.json")),
    "eval.json",
    "eval.md",
    "safety_vs_utility.png",
]


def make_bert_run(tmp_path_factory):
    """All phases and arms of warp_minilm.json, one seed, on a small share of the data; ``(output_dir, summary)``."""
    out = tmp_path_factory.mktemp("warp_bert")
    summary = run_recipe("warp", *MINILM[:1], f"output_dir={out}", *MINILM[1:])
    return out, summary


def run_phase(out, phase, *extra):
    """One phase of the MiniLM recipe into ``out``, with extra ``key=value`` overrides."""
    return run_recipe("warp", *MINILM[:1], f"output_dir={out}", *MINILM[1:], f"phase={phase}", *extra)


def copy_run(out, run, names=("config.json", "phase1", "phase2")):
    """Copy the named files and phase directories of run ``out`` into ``run``."""
    for name in names:
        if (out / name).is_dir():
            shutil.copytree(out / name, run / name)
        else:
            run.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / name, run / name)


def seed_copies(out, study, seeds=(42, 43)):
    """A study of ``seeds`` made of run ``out``'s config.json and eval.json, each config with its own seed."""
    for seed in seeds:
        copy_run(out, study / f"seed-{seed}", names=("config.json", "eval.json"))
        config = study / f"seed-{seed}" / "config.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | {"seed": seed}))


def rotate_basis(run):
    """Replace phase 1's basis by another valid one (same targets and shapes, orthonormal): another run's."""
    basis, metadata = load_tensors(run / "phase1" / "basis.safetensors")
    for key in [k for k in basis if k.endswith(".U")]:
        d = basis[key].shape[0]
        rotation = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))[0]
        basis[key] = basis[key] @ rotation
    save_tensors(run / "phase1" / "basis.safetensors", basis, metadata)
