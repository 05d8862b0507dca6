"""An http(s) MLFLOW_TRACKING_URI that does not answer is refused at parse time within seconds (mlflow itself
would retry it for minutes); a server that answers, and local stores, pass. Loopback addresses only."""

import ast
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from hf_ext import tracking
from hf_ext.config import HfExtTrainingArguments
from hf_ext.errors import ConfigError
from hf_ext.tracking import SERVER_PROBE_TIMEOUT_S, mlflow_unavailable_reason

FAST = 10.0  # seconds: well above the probe's timeout, far below mlflow's retries


@pytest.fixture(autouse=True)
def _direct(monkeypatch):
    """No proxy between the probe and the loopback servers, and mlflow not switched off."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("DISABLE_MLFLOW_INTEGRATION", raising=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A tiny HTTP server on 127.0.0.1 that answers 200 to every GET; yields its URI."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _timed(uri: str, monkeypatch) -> tuple[str | None, float]:
    pytest.importorskip("mlflow")  # without it the answer is "mlflow is not installed", whatever the URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.perf_counter()
    reason = mlflow_unavailable_reason()
    return reason, time.perf_counter() - start


def test_a_closed_port_is_refused_fast_with_the_fix(monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    reason, seconds = _timed(uri, monkeypatch)
    assert seconds < FAST
    assert reason is not None and "\n" not in reason
    assert f"MLFLOW_TRACKING_URI={uri} does not answer" in reason
    assert "start the MLflow server" in reason and "unset MLFLOW_TRACKING_URI" in reason


def test_the_config_is_refused_before_any_model_loads(monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://127.0.0.1:{_closed_port()}/mlflow")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"report_to=\['mlflow'\]: MLFLOW_TRACKING_URI=https://127.0.0.1:\d+/mlflow"):
        HfExtTrainingArguments(output_dir=str(tmp_path / "out"), report_to=["mlflow"])
    assert time.perf_counter() - start < FAST


def test_a_server_that_never_answers_is_refused_after_the_timeout(monkeypatch):
    with socket.socket() as silent:  # accepts connections (the backlog) and never sends a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        reason, seconds = _timed(f"http://127.0.0.1:{silent.getsockname()[1]}", monkeypatch)
    assert reason is not None and f"no answer within {SERVER_PROBE_TIMEOUT_S:g} s" in reason
    assert SERVER_PROBE_TIMEOUT_S - 0.5 < seconds < FAST


def test_a_server_that_answers_is_reachable(server, monkeypatch):
    reason, seconds = _timed(server, monkeypatch)
    assert reason is None
    assert seconds < FAST


def test_any_http_answer_counts(server, monkeypatch):
    reason, _ = _timed(server + "/some/prefix/", monkeypatch)  # a path the server does not know: still an answer
    assert reason is None


def test_the_password_of_the_uri_is_not_printed(monkeypatch):
    reason, _ = _timed(f"http://user:secret@127.0.0.1:{_closed_port()}", monkeypatch)
    assert reason is not None and "secret" not in reason and "user:***@127.0.0.1" in reason


@pytest.mark.parametrize("uri", ["sqlite:///{tmp}/mlflow.db", "file://{tmp}/mlruns", "{tmp}/mlruns", "databricks"])
def test_local_stores_are_not_probed(uri, monkeypatch, tmp_path):
    pytest.importorskip("mlflow")

    def probe(*args):
        raise AssertionError("probed a store that is not a server")

    monkeypatch.setattr(tracking, "_probe", probe)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(tmp=tmp_path))
    assert mlflow_unavailable_reason() is None


def test_tracking_does_not_import_the_config_module():
    """config imports tracking at parse time: tracking importing config (or the package face) back would be an
    import circle."""
    tree = ast.parse(Path(tracking.__file__).read_text())
    nodes = list(ast.walk(tree))
    imported = {"." * node.level + (node.module or "") for node in nodes if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    assert not {".config", "hf_ext.config", ".", "hf_ext"} & imported, imported
    assert ".version" in imported
