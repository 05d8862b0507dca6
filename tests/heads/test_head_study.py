"""The head study's mixed-precision choice: automatic only where the config left bf16 and fp16 unset."""

import pytest

import hf_ext.heads.study as study
from hf_ext.config import DataArguments, HfExtTrainingArguments, ModelArguments, given_keys
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
