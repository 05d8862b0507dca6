"""The import structure of hf_ext: no circles, no module importing the package face, light building blocks and
a command line that imports no technique to list its commands."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hf_ext"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _imports(name: str) -> list[tuple[str, int]]:
    """``(imported hf_ext module, line)`` for every import statement of module ``name``, wherever it stands
    (a function-level import closes a circle as surely as a module-level one)."""
    path = MODULES[name]
    package = name if name in PACKAGES else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "hf_ext"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "hf_ext":
                module = node.module
            else:
                continue
            for alias in node.names:  # `from . import distributed` imports the submodule
                sub = f"{module}.{alias.name}"
                found.append((sub if sub in MODULES else module, node.lineno))
    return found


def test_no_module_imports_a_package_face():
    """Only a package's own ``__init__`` uses its export table; modules import the submodule that defines a name."""
    offenders = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if name not in PACKAGES
        for target, line in _imports(name)
        if target in PACKAGES
    ]
    assert offenders == []


def test_no_import_circle():
    graph = {name: {target for target, _ in _imports(name) if target in MODULES} for name in MODULES}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for name in graph:
        if name not in index:
            visit(name)
    assert circles == []


def test_no_stack_walking_or_hidden_attributes_on_dataclasses():
    """What a run came from is a plain value: no frame inspection, no attributes forced onto dataclasses."""
    offenders = []
    for name, path in MODULES.items():
        text = path.read_text()
        for bad in ("sys._getframe", "inspect.stack", "inspect.currentframe"):
            if bad in text:
                offenders.append(f"{name}: {bad}")
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "__setattr__"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "object"
            ):
                offenders.append(f"{name}:{node.lineno}: object.__setattr__")
    # two remaining uses set attributes on nn.Module instances (hooks' bookkeeping), not on dataclasses
    allowed = {"hf_ext.warp.reparam", "hf_ext.selective.prefix", "hf_ext.warp.layout"}
    assert [o for o in offenders if o.split(":")[0] not in allowed] == []


def _loaded_modules(code: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return set(result.stdout.split())


HEAVY = ("datasets", "peft", "mlflow")


def test_a_building_block_loads_no_data_stack_and_no_study():
    loaded = _loaded_modules("from hf_ext.warp.masking import MaskedUpdate")
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert heavy == [] and _studies(loaded) == []


def _studies(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if m.startswith("hf_ext") and m.rsplit(".", 1)[-1] in ("study", "phases", "run"))


def test_the_package_face_loads_nothing_heavy():
    loaded = _loaded_modules("import hf_ext")
    assert sorted(m for m in loaded if m.split(".")[0] in ("torch", "transformers", *HEAVY)) == []


@pytest.mark.parametrize(
    ("code", "allowed"),
    [
        # a weight reader needs transformers' TrainerCallback, which itself imports peft
        ("from hf_ext import HeadImportanceCallback", {"peft"}),
        # gradient readers build on HfExtTrainer; transformers' Trainer module imports datasets and peft
        ("from hf_ext import MaskedUpdateCallback", {"datasets", "peft"}),
    ],
)
def test_a_callback_loads_no_study_and_no_more_than_transformers_brings(code, allowed):
    loaded = _loaded_modules(code)
    assert {m.split(".")[0] for m in loaded} & set(HEAVY) <= allowed
    assert _studies(loaded) == []


def test_hf_ext_help_imports_no_technique():
    loaded = _loaded_modules(
        "import contextlib, io\n"
        "from hf_ext.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])"
    )
    techniques = {"warp", "heads", "drift", "lora_null", "selective"}
    assert sorted(m for m in loaded if m.startswith("hf_ext.") and m.split(".")[1] in techniques) == []
    assert sorted(m for m in loaded if m.split(".")[0] in ("torch", *HEAVY)) == []
