"""Start-up cost of the lazy package face against an eager import of every hf_ext module (what the package
face did before), each in a fresh interpreter: wall time, best of ``--repeats``, and which heavy stacks load.

    python benchmarks/import_time.py [--repeats 5]
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from machine import processor

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for path in (ROOT / "hf_ext").rglob("*.py")
)
HEAVY = ("torch", "transformers", "datasets", "peft", "mlflow")

CASES = {
    "import hf_ext": "import hf_ext",
    "hf-ext --help": (
        "import contextlib, io\nfrom hf_ext.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['--help'])"
    ),
    "from hf_ext.warp.masking import MaskedUpdate": "from hf_ext.warp.masking import MaskedUpdate",
    "from hf_ext import MaskedUpdateCallback": "from hf_ext import MaskedUpdateCallback",
    "from hf_ext import HeadImportanceCallback": "from hf_ext import HeadImportanceCallback",
    "baseline: every hf_ext module (eager face)": "\n".join(f"import {name}" for name in MODULES),
    "baseline: from transformers import Trainer": "from transformers import Trainer",
}


def measure(code: str) -> tuple[float, list[str]]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return time.perf_counter() - start, result.stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{processor()}, python {sys.version.split()[0]}, best of {args.repeats} fresh interpreters")
    seconds, stacks = {}, {}
    for name, code in CASES.items():
        runs = [measure(code) for _ in range(args.repeats)]
        seconds[name], stacks[name] = min(t for t, _ in runs), runs[0][1]
    eager = seconds["baseline: every hf_ext module (eager face)"]
    print("| what | seconds | ratio to the eager face | heavy stacks loaded |\n| --- | --- | --- | --- |")
    for name in CASES:
        print(f"| `{name}` | {seconds[name]:.2f} | {seconds[name] / eager:.3f} | {', '.join(stacks[name]) or '-'} |")


if __name__ == "__main__":
    main()
