"""Run a recipe's main() in this process (test helper)."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(name: str, config: str, *overrides: str):
    """``recipes/<name>.py recipes/configs/<config> key=value ...``; returns what main() returns."""
    main = runpy.run_path(str(ROOT / "recipes" / f"{name}.py"))["main"]
    return main([str(ROOT / "recipes" / "configs" / config), *overrides])
