"""The head study's mixed-precision choice (automatic only where the config left bf16 and fp16 unset) and the
starting point of fine-tuning (finetune_from), checked when a run is resumed."""

import json

import pytest

import hf_ext.heads.study as study
from hf_ext.config import DataArguments, HfExtTrainingArguments, ModelArguments, given_keys
from hf_ext.errors import ConfigError, RunDirectoryError
from hf_ext.heads.config import HeadStudyArguments
from hf_ext.parsing import parse_config

TYPES = (ModelArguments, DataArguments, HeadStudyArguments, HfExtTrainingArguments)


def _training_args(tmp_path, *overrides):
    config = tmp_path / "config.json"
    config.write_text('{"output_dir": "%s", "report_to": []}' % (tmp_path / "out"))
    return parse_config(TYPES, [str(config), *overrides])[-1]


@pytest.fixture
def gpu_with_bf16(monkeypatch):
    monkeypatch.setattr(study, "mixed_precision", lambda: {"bf16": True, "fp16": False})


def test_unset_precision_is_chosen_automatically_and_said(tmp_path, gpu_with_bf16, capsys):
    args = _training_args(tmp_path)
    assert given_keys(args) == {"output_dir", "report_to"}
    assert study.choose_precision(args) == {"bf16": True, "fp16": False}
    assert "head study: bf16 (chosen automatically" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["bf16=false", "fp16=false"])
def test_precision_set_in_the_config_is_kept(tmp_path, gpu_with_bf16, capsys, override):
    args = _training_args(tmp_path, override)
    assert override.split("=")[0] in given_keys(args)
    assert study.choose_precision(args) == {"bf16": False, "fp16": False}
    assert "head study: fp32 (no mixed precision) (as configured)" in capsys.readouterr().out


def test_finetune_from_defaults_to_the_probed_head_and_bad_values_are_one_line_errors(tmp_path):
    assert HeadStudyArguments().finetune_from == "probed_head"
    without_probe = HeadStudyArguments(probe_before_importance=False, finetune_from="random_head")
    assert without_probe.start_settings("seq_cls") == {
        "finetune_from": "random_head",
        "probe_before_importance": False,
        "probe_epochs": 3,
        "probe_lr": 1e-3,
    }
    assert HeadStudyArguments().start_settings("causal_lm")["finetune_from"] == "pretrained_head"  # never probed
    with pytest.raises(ConfigError, match="^finetune_from='last' is not one of probed_head, random_head$"):
        HeadStudyArguments(finetune_from="last")
    with pytest.raises(ConfigError, match="finetune_from=probed_head needs probe_before_importance=true"):
        HeadStudyArguments(probe_before_importance=False)
    with pytest.raises(ConfigError, match="finetune_from=\"last\" is invalid; expected one of 'probed_head'"):
        _training_args(tmp_path, "finetune_from=last")


def test_a_seed_started_from_another_head_is_not_resumed(tmp_path):
    """The check runs before any model is loaded: a resumed run cannot continue a checkpoint of the other start."""
    config = tmp_path / "config.json"
    config.write_text(
        '{"output_dir": "%s", "report_to": [], "seeds": [1], "task_type": "seq_cls"}' % (tmp_path / "out")
    )
    seed = tmp_path / "out" / "seed-1"
    seed.mkdir(parents=True)
    (seed / "study.json").write_text(json.dumps(HeadStudyArguments().start_settings("seq_cls")))
    args = parse_config(TYPES, [str(config), "finetune_from=random_head", "resume_from_checkpoint=true"])
    with pytest.raises(RunDirectoryError, match=r"finetune_from='probed_head' \(now 'random_head'\)"):
        study.run_head_study(*args)
    assert sorted(p.name for p in seed.iterdir()) == ["study.json"]  # nothing measured, nothing written
