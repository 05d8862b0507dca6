import json

import pytest
from recipes_util import run_recipe
from tb_events import read_events

from hf_ext.cli import main as cli
from hf_ext.errors import HfExtError, RunDirectoryError

TINY = (
    "model_name_or_path=tiny:bert",
    "max_train_samples=64",
    'lora_target_modules=["query","value"]',
    "lora_r=4",
    "calib_samples=64",
    "verify_samples=16",
    "warmup_steps=0",
    "eval_steps=1",
    "logging_steps=1",
    "learning_rate=0.01",
)


@pytest.mark.parametrize("mode", ["null_frozen_A", "null_projection"])
def test_the_recipe_verifies_at_init_and_after_training_and_saves_a_plain_peft_adapter(tmp_path, mode, capsys):
    out = tmp_path / "run"
    run_recipe("lora_null", "lora_null_minilm_topic.json", f"output_dir={out}", f"mode={mode}", *TINY)
    initial = json.loads((out / "verify_init.json").read_text())
    trained = json.loads((out / "verify_trained.json").read_text())
    assert len(initial["layers"]) == len(trained["layers"]) == 4
    assert initial["mean"]["adapter_effect"] < 1e-6 if mode == "null_frozen_A" else initial["mean"]["norm_B"] > 0
    assert trained["mean"]["norm_B"] != initial["mean"]["norm_B"]
    if mode == "null_frozen_A":
        assert trained["mean"]["norm_A"] == initial["mean"]["norm_A"]
    printed = capsys.readouterr().out
    assert "verification at init:" in printed and "init vs trained (means over layers):" in printed
    events = read_events(next((out / "runs").iterdir()))
    steps = [e.step for e in events.Scalars("train/lora_null/norm_B")]
    assert steps[0] == 0 and len(steps) >= 3  # init, every evaluation, end
    adapter = [
        "--model",
        "tiny:bert",
        "--num-labels",
        "4",
        "--adapter",
        str(out / "adapter"),
        "--data",
        "builtin:topic",
    ]
    assert (
        cli(["lora-null", "verify", *adapter, "--max-examples", "16", "--save-stats", str(tmp_path / "v.json")]) == 0
    )
    assert cli(["lora-null", "compare", str(out / "verify_init.json"), str(tmp_path / "v.json")]) == 0
    printed = capsys.readouterr().out
    assert "| norm_B |" in printed
    assert ("saved as a standard rank-2r LoRA" in printed) == (mode == "null_projection")
    assert cli(["lora-null", "verify", *adapter[:2], *adapter[4:]]) == 2  # the head has 4 classes, not 2
    assert "size mismatch for" in capsys.readouterr().err
    with pytest.raises(RunDirectoryError, match="already holds a finished run"):
        run_recipe("lora_null", "lora_null_minilm_topic.json", f"output_dir={out}", f"mode={mode}", *TINY)


@pytest.mark.parametrize(
    "override, message",
    [
        ('lora_target_modules=["nope"]', "lora_target_modules: target pattern 'nope' matches no nn.Linear module"),
        ("lora_r=65", "LoRA rank r=65 is larger than d_in=64"),
        ("freeze_A=false", "freeze_A=false contradicts mode null_frozen_A"),
        ("calib_dataset=builtin:nope", "calib_dataset='builtin:nope': unknown built-in task 'nope'"),
        ("calib_text_column=nope", "has no column 'nope' .*; set calib_text_column"),
        (f"calib_dataset={'missing.jsonl'}", "calib_dataset='missing.jsonl': data file missing.jsonl not found"),
    ],
)
def test_bad_lora_null_arguments_are_refused(tmp_path, override, message):
    with pytest.raises(HfExtError, match=message):
        run_recipe("lora_null", "lora_null_minilm_topic.json", f"output_dir={tmp_path / 'x'}", *TINY, override)
    assert not (tmp_path / "x" / "verify_trained.json").exists()


def test_cli_verify_refuses_bad_files(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"x": 1}')
    assert cli(["lora-null", "compare", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2
    assert "is not a LoRA-Null verification file" in capsys.readouterr().err
    args = ["lora-null", "verify", "--model", "tiny:bert", "--adapter", str(tmp_path), "--data", "builtin:topic"]
    assert cli(args) == 2
    assert "not a saved peft adapter" in capsys.readouterr().err
