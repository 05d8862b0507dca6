"""A Trainer run that fails before writing anything leaves no empty output_dir behind, and never touches a
directory that existed before it or any file."""

import hashlib
from pathlib import Path

import pytest
from transformers import TrainingArguments

from hf_ext.config import DataArguments, ModelArguments
from hf_ext.data import prepare_data
from hf_ext.errors import RunDirectoryError
from hf_ext.models import load_model, load_tokenizer
from hf_ext.trainer import HfExtTrainer

NO_CHECKPOINT = r"resume_from_checkpoint=true but .* holds no checkpoint-<step>"
NOT_A_CHECKPOINT = r"is not a checkpoint \(no trainer_state.json\)"


@pytest.fixture(scope="module")
def parts():
    tokenizer = load_tokenizer("tiny:bert")
    data = prepare_data(DataArguments(max_train_samples=16, max_eval_samples=8), tokenizer, "seq_cls")
    model = load_model(ModelArguments(model_name_or_path="tiny:bert"), tokenizer, data.labels)
    return model, data


def _trainer(parts, output_dir: Path, **overrides) -> HfExtTrainer:
    model, data = parts
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=8,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        **overrides,
    )
    return HfExtTrainer(model=model, args=args, train_dataset=data.train, data_collator=data.collator)


def _tree(directory: Path) -> dict[str, str]:
    """Every folder and file under ``directory`` (itself included): ``"dir"`` or the file's SHA-256."""
    return {
        str(path.relative_to(directory)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in [directory, *directory.rglob("*")]
    }


def _not_a_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "not_a_checkpoint"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a checkpoint")
    return folder


def test_resume_true_without_a_checkpoint_leaves_no_output_dir(parts, tmp_path):
    out = tmp_path / "new" / "out"  # the Trainer makes both folders
    trainer = _trainer(parts, out)
    assert out.is_dir()
    with pytest.raises(RunDirectoryError, match=NO_CHECKPOINT):
        trainer.train(resume_from_checkpoint=True)
    assert list(tmp_path.iterdir()) == []


def test_resume_from_a_folder_that_is_no_checkpoint_leaves_no_output_dir(parts, tmp_path):
    folder = _not_a_checkpoint(tmp_path)
    before = _tree(folder)
    trainer = _trainer(parts, tmp_path / "out")
    with pytest.raises(RunDirectoryError, match=NOT_A_CHECKPOINT):
        trainer.train(resume_from_checkpoint=str(folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_checkpoint"]
    assert _tree(folder) == before


def test_empty_folders_the_run_made_go_too(parts, tmp_path):
    out = tmp_path / "out"
    trainer = _trainer(parts, out)
    (out / "runs" / "empty_tensorboard_dir").mkdir(parents=True)
    with pytest.raises(RunDirectoryError, match=NO_CHECKPOINT):
        trainer.train(resume_from_checkpoint=True)
    assert not out.exists()


def test_a_tensorboard_dir_outside_output_dir_made_by_the_run_goes_too(parts, tmp_path, monkeypatch):
    logs = tmp_path / "logs" / "run"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))
    trainer = _trainer(parts, tmp_path / "out")
    logs.mkdir(parents=True)  # as a SummaryWriter that failed before its first event would leave it
    with pytest.raises(RunDirectoryError, match=NO_CHECKPOINT):
        trainer.train(resume_from_checkpoint=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("resume", [True, "not_a_checkpoint"])
def test_a_pre_existing_output_dir_is_left_exactly_as_it_was(parts, tmp_path, resume):
    folder = _not_a_checkpoint(tmp_path)
    out = tmp_path / "out"
    (out / "empty").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    trainer = _trainer(parts, out)
    with pytest.raises(RunDirectoryError):
        trainer.train(resume_from_checkpoint=True if resume is True else str(folder))
    assert _tree(tmp_path) == before


def test_a_pre_existing_empty_output_dir_stays(parts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    trainer = _trainer(parts, out)
    with pytest.raises(RunDirectoryError, match=NO_CHECKPOINT):
        trainer.train(resume_from_checkpoint=True)
    assert out.is_dir() and list(out.iterdir()) == []


def test_a_file_written_into_the_new_output_dir_keeps_the_whole_tree(parts, tmp_path):
    out = tmp_path / "new" / "out"
    trainer = _trainer(parts, out)
    (out / "runs").mkdir()
    (out / "runs" / "events").write_text("written")
    (out / "empty").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(RunDirectoryError, match=NO_CHECKPOINT):
        trainer.train(resume_from_checkpoint=True)
    assert _tree(tmp_path) == before


def test_training_after_a_failed_start_writes_into_a_fresh_output_dir(parts, tmp_path):
    out = tmp_path / "out"
    trainer = _trainer(parts, out)
    with pytest.raises(RunDirectoryError, match=NO_CHECKPOINT):
        trainer.train(resume_from_checkpoint=True)
    assert not out.exists()
    trainer.train()
    trainer.save_state()  # writes into output_dir without making it
    assert (out / "trainer_state.json").is_file()


def test_train_and_report_with_resume_true_and_no_checkpoint_leaves_no_output_dir(parts, tmp_path):
    out = tmp_path / "out"
    trainer = _trainer(parts, out)
    with pytest.raises(RunDirectoryError, match=NO_CHECKPOINT):
        trainer.train_and_report({"eval": parts[1].validation}, resume_from_checkpoint=True)
    assert list(tmp_path.iterdir()) == []


def test_an_evaluation_before_training_logs_into_output_dir(tmp_path, monkeypatch):
    """transformers' TensorBoardCallback names its folder at train start; an evaluate() before it (the seq_cls
    recipe's init control) must not open a writer in ./runs of the working directory."""
    from hf_ext import DataArguments, HfExtTrainer, HfExtTrainingArguments, ModelArguments, load_model_and_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    model_args = ModelArguments(model_name_or_path="tiny:bert")
    data_args = DataArguments(dataset_name="builtin:topic", max_train_samples=16, max_eval_samples=8)
    args = HfExtTrainingArguments(
        output_dir="out", max_steps=1, report_to=["tensorboard"], save_strategy="no", disable_tqdm=True
    )
    tokenizer, data, model = load_model_and_data(model_args, data_args)
    trainer = HfExtTrainer(model=model, args=args, processing_class=tokenizer, **data.trainer_kwargs())
    trainer.evaluate()
    trainer.train()
    assert not (tmp_path / "runs").exists()
    assert len(list((tmp_path / "out").rglob("events.out.tfevents.*"))) == 1
