"""Without matplotlib, studies skip their figures with one line and figure-only commands fail clearly."""

import pytest

import hf_ext.plotting
from hf_ext.cli import main as cli
from hf_ext.errors import ConfigError
from hf_ext.warp.summary import plot_safety_vs_utility, summarize


def test_missing_matplotlib_skips_figures_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hf_ext.plotting, "_import_pyplot", lambda: None)
    assert not hf_ext.plotting.plotting_available("drift figure")
    assert "matplotlib is not installed: no drift figure (pip install 'hf_ext[plots]')" in capsys.readouterr().out
    row = {"label": "x", "safety_accuracy": 1.0, "utility_accuracy": 0.5, "margin_retention": 1.0}
    summary = summarize({1: {"phase2": row}}, {"safety": 2, "utility": 2})
    assert plot_safety_vs_utility(summary, tmp_path / "f.png") is None and not (tmp_path / "f.png").exists()
    with pytest.raises(ConfigError, match="needs matplotlib"):
        hf_ext.plotting.require_pyplot()
    assert cli(["drift", "plot", "--run", str(tmp_path)]) == 2  # one line, no traceback


def test_figures_are_drawn_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    row = {"label": "x", "safety_accuracy": 1.0, "utility_accuracy": 0.5, "margin_retention": 1.0}
    summary = summarize({1: {"phase2": row}, 2: {"phase2": row}}, {"safety": 2, "utility": 2})
    assert plot_safety_vs_utility(summary, tmp_path / "f.png") == tmp_path / "f.png"
    assert (tmp_path / "f.png").stat().st_size > 1000
