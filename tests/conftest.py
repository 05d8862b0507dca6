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
