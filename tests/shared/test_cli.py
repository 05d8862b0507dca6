import json
import subprocess

from hf_ext.cli import main as cli


def test_console_script_help_lists_subcommands():
    result = subprocess.run(["hf-ext", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("targets", "data"):
        assert command in result.stdout


def test_targets_lists_selection_and_heads(capsys):
    assert cli(["targets", "tiny:llama", "layers.1.mlp.*", "--task-type", "causal_lm"]) == 0
    out = capsys.readouterr().out
    assert "3 linear module(s) selected" in out
    assert "model.layers.1.mlp.down_proj  in=128 out=64" in out
    assert "model.layers.0.self_attn.o_proj  4 2 16" in out


def test_targets_error_is_a_message_not_a_traceback(capsys):
    assert cli(["targets", "tiny:llama", "mlp.nothing"]) == 2
    assert "hf-ext targets: error: target pattern 'mlp.nothing' matches no nn.Linear" in capsys.readouterr().err


def test_data_export_writes_three_splits(tmp_path, capsys):
    assert cli(["data", "export", "sentiment", "--out", str(tmp_path), "--seed", "3"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2400 and set(rows[0]) == {"text", "label", "prompt", "response"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.jsonl", "train.jsonl", "validation.jsonl"]
