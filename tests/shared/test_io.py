import errno
import json
from pathlib import Path

import pytest
import torch

from hf_ext import __version__
from hf_ext.errors import WriteError
from hf_ext.io import FileFormatError, load_tensors, read_json, save_tensors, sidecar_path, write_json


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "layer.U": torch.randn(7, 5, generator=g, dtype=torch.float64),
        "layer.eigenvalues": torch.randn(5, generator=g),
        "half": torch.randn(3, 4, generator=g).to(torch.bfloat16),
        "mask": torch.rand(4, 4, generator=g) > 0.5,
        "count": torch.tensor(12, dtype=torch.int64),
    }


def test_round_trip_is_bit_exact_and_sidecar_describes_it(tmp_path):
    tensors = _tensors()
    path = tmp_path / "basis.safetensors"
    save_tensors(path, tensors, {"keep_ratio": 0.1, "modules": ["a", "b"]})
    loaded, metadata = load_tensors(path)
    assert metadata == {"keep_ratio": 0.1, "modules": ["a", "b"]}
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name
    sidecar = read_json(sidecar_path(path))
    assert sidecar_path(path).name == "basis.json"
    assert sidecar["hf_ext_version"] == __version__
    assert sidecar["tensors"]["layer.U"] == {"shape": [7, 5], "dtype": "float64"}
    assert sidecar["size_bytes"] == path.stat().st_size


def test_views_and_non_contiguous_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    save_tensors(tmp_path / "v.safetensors", {"t": base.T, "row": base[1]})
    loaded, _ = load_tensors(tmp_path / "v.safetensors")
    assert torch.equal(loaded["t"], base.T) and torch.equal(loaded["row"], base[1])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileFormatError, match="nothere.safetensors not found"):
        load_tensors(tmp_path / "nothere.safetensors")
    save_tensors(tmp_path / "x.safetensors", _tensors())
    sidecar_path(tmp_path / "x.safetensors").unlink()
    with pytest.raises(FileFormatError, match="x.json not found"):
        load_tensors(tmp_path / "x.safetensors")


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "x.safetensors"
    save_tensors(path, _tensors())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        load_tensors(path)


def test_corrupted_bytes_are_detected(tmp_path):
    path = tmp_path / "x.safetensors"
    save_tensors(path, _tensors())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="corrupt"):
        load_tensors(path)


def test_sidecar_that_does_not_match_the_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_tensors(path, _tensors())
    side = sidecar_path(path)
    info = json.loads(side.read_text())
    info["tensors"]["layer.U"]["shape"] = [5, 7]
    side.write_text(json.dumps(info))
    with pytest.raises(FileFormatError, match="does not match its sidecar"):
        load_tensors(path)


def test_newer_format_and_foreign_json_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    save_tensors(path, _tensors())
    side = sidecar_path(path)
    info = json.loads(side.read_text())
    side.write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(FileFormatError, match="upgrade hf_ext"):
        load_tensors(path)
    side.write_text(json.dumps({"hello": 1}))
    with pytest.raises(FileFormatError, match="not an hf_ext tensor sidecar"):
        load_tensors(path)
    side.write_text("{not json")
    with pytest.raises(FileFormatError, match="not valid JSON"):
        load_tensors(path)


def test_expected_shapes(tmp_path):
    path = tmp_path / "x.safetensors"
    save_tensors(path, _tensors())
    load_tensors(path, expected_shapes={"layer.U": (7, 5)})
    with pytest.raises(FileFormatError, match=r"layer.U: expected \(5, 5\), found \(7, 5\)"):
        load_tensors(path, expected_shapes={"layer.U": (5, 5)})
    with pytest.raises(FileFormatError, match="no tensor for"):
        load_tensors(path, expected_shapes={"other.U": (7, 5)})


def test_failed_save_leaves_previous_pair_intact_and_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "x.safetensors"
    save_tensors(path, {"a": torch.ones(3)}, {"run": 1})

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("hf_ext.io.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"a": torch.zeros(3)}, {"run": 2})
    loaded, metadata = load_tensors(path)
    assert torch.equal(loaded["a"], torch.ones(3)) and metadata == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.safetensors"]


def test_a_sidecar_that_cannot_be_written_leaves_the_earlier_tensors_too(tmp_path, monkeypatch):
    """Both files are written before either is renamed: a full disk at the sidecar keeps the earlier pair."""
    path = tmp_path / "x.safetensors"
    save_tensors(path, {"a": torch.ones(3)}, {"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(WriteError, match=r"cannot write .*x.json: No space left on device; the previous x.json is"):
        save_tensors(path, {"a": torch.zeros(3)}, {"run": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_write_json_is_atomic_and_readable(tmp_path):
    write_json(tmp_path / "sub" / "m.json", {"a": [1, 2]})
    assert read_json(tmp_path / "sub" / "m.json") == {"a": [1, 2]}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.json"]


def test_only_safetensors_suffix(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        save_tensors(tmp_path / "x.pt", {"a": torch.ones(1)})


KEEP_SAVING = """
import sys, torch
from hf_ext.io import save_tensors
k = 0
while True:
    k += 1
    save_tensors(sys.argv[1], {"a": torch.full((200_000 + 1000 * (k % 7),), float(k))}, {"k": k})
"""


def test_a_process_killed_while_saving_leaves_a_complete_file_or_a_detected_mismatch(tmp_path):
    """SIGKILL at an arbitrary moment of a loop of saves: the tensor file is always a complete earlier or later
    version; if the kill fell between the tensors and their sidecar, loading says so instead of returning data
    that the sidecar does not describe."""
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    path = tmp_path / "x.safetensors"
    for delay in (0.05, 0.13, 0.31):
        process = subprocess.Popen([sys.executable, "-c", KEEP_SAVING, str(path)])
        while not sidecar_path(path).is_file():  # importing takes a while; kill only once saves are going on
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert load_file(path)["a"].numel() >= 200_000  # never a partial tensor file
        try:
            tensors, metadata = load_tensors(path)
        except FileFormatError as err:
            assert "sidecar" in str(err)
        else:
            assert torch.all(tensors["a"] == metadata["k"])
        assert {p.name for p in tmp_path.iterdir()} >= {"x.safetensors", "x.json"}  # temporaries may remain
