"""The bad-input catalogue (see tests/shared/test_bad_inputs.py), head gating: `hf-ext heads aggregate` and `plot`
options out of range, truncated or missing run files."""

import json
from pathlib import Path

import pytest
from bad_inputs_util import unchanged

from hf_ext.cli import main as cli


def _head_run(tmp_path) -> Path:
    from hf_ext.heads.analysis import write_jsonl

    values = [[1.0, 2.0], [3.0, 4.0]]
    for name, fields in {
        "I_pre": ("loss_increase",),
        "I_post": ("loss_increase",),
        "G_pre": ("gradient", "fisher"),
        "U": ("U", "Urel"),
    }.items():
        write_jsonl(tmp_path / f"{name}.jsonl", {f: values for f in fields})
    return tmp_path


@pytest.mark.parametrize(
    "options, message",
    [
        (["--important", "150"], "important percentile 150 is outside 0..100"),
        (["--static", "-5"], "static percentile -5 is outside 0..100"),
        (["--important", "10"], "important percentile 10 is below unimportant percentile 30"),
        (["--top-k", "1000"], "top_k=1000 but there are 4 heads; choose top_k between 1 and 4"),
    ],
)
def test_heads_aggregate_options_out_of_range(tmp_path, capsys, options, message):
    run = _head_run(tmp_path)
    with unchanged(run):
        assert cli(["heads", "aggregate", "--run", str(run), "--top-k", "2", *options]) == 2
    assert message in capsys.readouterr().err


def test_heads_aggregate_uses_the_runs_own_top_k_by_default(tmp_path, capsys):
    run = _head_run(tmp_path)
    assert cli(["heads", "aggregate", "--run", str(run), "--top-k", "3"]) == 0
    assert cli(["heads", "aggregate", "--run", str(run)]) == 0  # 4 heads: the default 20 would be refused
    assert json.loads((run / "stats.json").read_text())["top_k"] == 3


def test_heads_analysis_names_a_truncated_line_and_a_wrong_directory(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    run = _head_run(tmp_path / "run")
    with open(run / "I_pre.jsonl", "a") as f:
        f.write('{"layer": 0, "head": 0, "value": ')
    with unchanged(run):
        assert cli(["heads", "aggregate", "--run", str(run)]) == 2
    assert "I_pre.jsonl:5: not valid JSON" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["heads", "plot", "--run", str(tmp_path / "empty")]) == 2
    assert "holds neither seed-* directories nor I_pre.jsonl" in capsys.readouterr().err


def test_heads_aggregate_top_k_zero_is_refused(tmp_path, capsys):
    with unchanged(_head_run(tmp_path)):
        assert cli(["heads", "aggregate", "--run", str(tmp_path), "--top-k", "0"]) == 2
    assert "top_k=0 but there are 4 heads" in capsys.readouterr().err
