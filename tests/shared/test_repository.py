"""Checks on the repository itself: configs parse, no pickle, every recipe config is valid."""

import ast
import dataclasses
import importlib
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from hf_ext.config import HfExtTrainingArguments, ModelArguments
from hf_ext.parsing import parse_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name, distributed_type",
    [
        ("cpu", "NO"),
        ("single_gpu", "NO"),
        ("multi_gpu", "MULTI_GPU"),
        ("fsdp2", "FSDP"),
        ("deepspeed_zero2", "DEEPSPEED"),
    ],
)
def test_accelerate_configs_load(name, distributed_type):
    config = load_config_from_file(str(ROOT / "accelerate_configs" / f"{name}.yaml"))
    assert config.distributed_type == distributed_type
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
    if name == "deepspeed_zero2":
        assert config.deepspeed_config["zero_stage"] == 2


PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve"}
SCANNED = ("hf_ext", "recipes", "benchmarks")


def _unsafe_loading(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` for every pickle import, ``torch.load`` without ``weights_only=True`` (also imported as
    ``from torch import load``) and ``numpy.load(allow_pickle=True)`` in a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append((node.lineno, f"from {node.module} import ..."))
            elif node.module in ("torch", "torch.serialization") and any(a.name == "load" for a in node.names):
                found.append((node.lineno, f"from {node.module} import load"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            owner = ast.unparse(node.func.value)
            keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            if owner in ("torch", "torch.serialization") and keywords.get("weights_only") is not True:
                found.append((node.lineno, f"{owner}.load without weights_only=True"))
            if owner in ("np", "numpy") and keywords.get("allow_pickle") is True:
                found.append((node.lineno, f"{owner}.load(allow_pickle=True)"))
    return found


def test_no_pickle_and_safe_torch_load():
    """Every module of hf_ext (subpackages included), recipes and benchmarks: no pickle, ``torch.load`` only with
    ``weights_only=True``."""
    paths = sorted(path for folder in SCANNED for path in (ROOT / folder).rglob("*.py"))
    packages = {path.parent for path in (ROOT / "hf_ext").rglob("__init__.py")}
    assert packages <= {path.parent for path in paths} and len(packages) > 1  # the scan reaches every subpackage
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in paths
        for line, what in _unsafe_loading(ast.parse(path.read_text()))
    ]
    assert offenders == []


def test_the_unsafe_loading_scan_finds_what_it_looks_for():
    code = """
import pickle
from torch import load
import numpy as np
torch.load(path)
torch.load(
    path, weights_only=False
)
torch.load(path, map_location="cpu", weights_only=True)
np.load(path, allow_pickle=True)
"""
    assert [line for line, _ in _unsafe_loading(ast.parse(code))] == [2, 3, 5, 6, 10]


def _recipe_of(config: Path) -> str:
    """The recipe a config belongs to: the recipe whose name prefixes the config's name."""
    recipes = [p.stem for p in (ROOT / "recipes").glob("*.py")]
    matches = [r for r in recipes if config.name.startswith(r + "_")]
    assert matches, f"{config.name} does not start with a recipe name ({recipes})"
    return max(matches, key=len)


RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))


def _argument_types(recipe: str) -> tuple[type, ...]:
    """The dataclasses a recipe parses its config into (its module-level ``ARGUMENT_TYPES``)."""
    return runpy.run_path(str(ROOT / "recipes" / f"{recipe}.py"))["ARGUMENT_TYPES"]


def _recipe_arguments(config: Path) -> tuple[type, ...]:
    return _argument_types(_recipe_of(config))


@pytest.mark.parametrize("recipe", RECIPES)
def test_no_key_belongs_to_two_argument_dataclasses_of_a_recipe(recipe):
    """HfArgumentParser would fail with argparse's 'conflicting option string', not a ConfigError."""
    owners: dict[str, list[str]] = {}
    for kind in _argument_types(recipe):
        for field in dataclasses.fields(kind):
            owners.setdefault(field.name, []).append(kind.__name__)
    assert {name: kinds for name, kinds in owners.items() if len(kinds) > 1} == {}
    assert ModelArguments in _argument_types(recipe) and HfExtTrainingArguments in _argument_types(recipe)


LAZY_PACKAGES = ["hf_ext", "hf_ext.warp", "hf_ext.heads", "hf_ext.drift", "hf_ext.lora_null", "hf_ext.selective"]


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_type_checking_block_names_every_lazy_export(package):
    """Each package's ``if TYPE_CHECKING:`` imports equal its lazy export table, and every name resolves."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text())
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    imported = {(node.module, alias.name) for node in block.body for alias in node.names}
    exported = {(submodule, name) for submodule, names in module._EXPORTS.items() for name in names}
    assert imported == exported
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_the_package_face_is_narrow_and_each_name_is_its_techniques():
    """About 25 names at the top; a name from a technique is that technique package's own export."""
    import hf_ext

    assert 20 <= len(hf_ext.__all__) <= 30
    for submodule, names in hf_ext._EXPORTS.items():
        technique = importlib.import_module(f"hf_ext.{submodule}")
        if technique.__file__.endswith("__init__.py"):
            assert set(names) <= set(technique.__all__), submodule


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_passes(command):
    """Style is enforced: ``ruff check`` and ``ruff format --check`` with the config in pyproject.toml."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", sorted((ROOT / "recipes" / "configs").glob("*.json")), ids=lambda p: p.name)
def test_recipe_configs_parse(config):
    """Every config parses with its recipe's dataclasses (the config's name starts with the recipe's)."""
    settings = json.loads(config.read_text())
    if "mlflow" in settings.get("report_to", []):
        pytest.importorskip("mlflow")  # report_to mlflow without it is a ConfigError by design
    gpu_only = settings.get("bf16") and not torch.cuda.is_available()
    overrides = ["bf16=false"] if gpu_only else []  # TrainingArguments refuses bf16 on a CPU-only machine
    model_args, *_, training_args = parse_config(_recipe_arguments(config), [str(config), *overrides])
    assert training_args.report_to[0] == "tensorboard"  # scalars and figures land in TensorBoard
    assert model_args.model_name_or_path


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_accepts_allow_pickle_weights(recipe):
    """The model key of the no-unsafe-loading rule reaches every recipe (through ModelArguments)."""
    config = next(c for c in sorted((ROOT / "recipes" / "configs").glob("*.json")) if _recipe_of(c) == recipe)
    gpu_only = json.loads(config.read_text()).get("bf16") and not torch.cuda.is_available()
    overrides = ["allow_pickle_weights=true", *(["bf16=false"] if gpu_only else [])]
    model_args, *_ = parse_config(_argument_types(recipe), [str(config), *overrides])
    assert model_args.allow_pickle_weights is True


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
    commands = _readme_commands()
    assert len(commands) == 2
    demo, tests = commands
    assert "recipes/" in demo and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def _declared_requirements() -> set[str]:
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    lines += [line for value in config["options.extras_require"].values() for line in value.splitlines()]
    return {
        re.split(r"[<>=!\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
        for line in lines
        if line.strip()
    }


def test_every_imported_package_is_declared_in_setup_cfg():
    """A package hf_ext imports must be in install_requires or an extra, not arrive only transitively."""
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    imported = set()
    for path in (ROOT / "hf_ext").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = sorted(m for m in imported - set(sys.stdlib_module_names) - {"hf_ext"})
    declared = _declared_requirements()
    undeclared = [
        module
        for module in third_party
        if not {d.lower().replace("_", "-") for d in distributions.get(module, [module])} & declared
    ]
    assert undeclared == []


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_are_one_screen_on_the_public_api(recipe):
    """A recipe imports the package face or a technique package, never a shared internal module, and fits a screen."""
    path = ROOT / "recipes" / f"{recipe}.py"
    allowed = {"hf_ext", "hf_ext.warp", "hf_ext.heads", "hf_ext.drift", "hf_ext.lora_null", "hf_ext.selective"}
    modules = {
        node.module
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_ext")
    }
    assert modules <= allowed, modules - allowed
    assert len(path.read_text().splitlines()) <= 65
