import json

import pytest
import torch
from recipes_util import run_recipe

from hf_ext.errors import ConfigError
from hf_ext.lora_null.preservation import linear_probe_accuracy

TINY = (
    "model_name_or_path=tiny:bert",
    'lora_target_modules=["query","value"]',
    "lora_r=4",
    "max_train_samples=64",
    "seeds=[1]",
    "probe_samples=64",
    "calib_samples=64",
    "warmup_steps=0",
    "learning_rate=0.01",
)


def test_linear_probe_reads_separable_classes_and_not_random_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.1 * x[:, 1] > 0).long()
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.9
    noise = torch.randint(0, 2, (400,), generator=g)
    assert abs(linear_probe_accuracy(x[:200], noise[:200], x[200:], noise[200:]) - 0.5) < 0.12


def test_the_preservation_recipe_writes_a_row_per_method_and_seed(tmp_path):
    out = tmp_path / "run"
    methods = 'methods=["lora","null_frozen_A","corda_kpm","head_only"]'
    run_recipe("lora_null_preservation", "lora_null_preservation_minilm.json", f"output_dir={out}", methods, *TINY)
    summary = json.loads((out / "preservation.json").read_text())
    assert [r["method"] for r in summary["rows"]] == ["lora", "null_frozen_A", "corda_kpm", "head_only"]
    head_only = summary["rows"][-1]
    assert head_only["embedding_cosine"] == pytest.approx(1, abs=1e-9)  # no adapter moved: the control is exact
    assert head_only["probe_accuracy"] == pytest.approx(summary["base_probe_accuracy"], abs=1e-9)
    assert (out / "preservation.csv").read_text().count("\n") == 5
    pytest.importorskip("matplotlib")  # the figure (the plots extra)
    assert (out / "preservation.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "override, message",
    [
        ('methods=["x"]', "must be a non-empty list of distinct"),
        ("mode=null_projection", "mode do not apply to the preservation recipe"),
        ("probe_task=nope", "probe_task='nope': unknown built-in task"),
    ],
)
def test_bad_preservation_arguments_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_recipe(
            "lora_null_preservation", "lora_null_preservation_minilm.json", f"output_dir={tmp_path}", *TINY, override
        )
    assert not (tmp_path / "preservation.json").exists()
