"""Shared fixtures. Every test runs offline: nothing may reach the hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TINY_ARCHITECTURES = ("llama", "qwen2", "deberta-v2", "bert")


@pytest.fixture(params=TINY_ARCHITECTURES)
def tiny_architecture(request):
    return request.param


@pytest.fixture(scope="session")
def bert_run(tmp_path_factory):
    """A finished WaRP run on the embedded MiniLM (``tests/warp_runs.py``), shared by the test files."""
    from warp_runs import make_bert_run

    return make_bert_run(tmp_path_factory)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A sqlite store under tmp_path, the working directory there (artifacts land in ./mlruns); open runs
    are ended afterwards, while the store is still the one they belong to. Skips the test without the optional
    mlflow extra (pip install 'hf_ext[mlflow]')."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_NESTED_RUN", "DISABLE_MLFLOW_INTEGRATION"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()


def all_runs(uri):
    """The client of an MLflow store and every run in it."""
    import mlflow

    client = mlflow.tracking.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments)
