import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_ext.drift.measure import compare_dumps, measure_drift
from hf_ext.drift.recorders import RepresentationRecorder, pool
from hf_ext.drift.shards import DumpReader, dump_representations
from hf_ext.errors import ConfigError, FileFormatError, RunDirectoryError
from hf_ext.models import tiny_model
from hf_ext.texts import load_texts, text_batches


def _setup(architecture="bert", n=40, batch_size=8, seed=0, task_type="seq_cls", padding_side="right"):
    model, tokenizer = tiny_model(architecture, task_type, seed=seed)
    tokenizer.padding_side = padding_side
    ids, texts = load_texts("builtin:sentiment", limit=n)
    return model.eval(), ids, text_batches(tokenizer, texts, batch_size=batch_size, max_length=32)


def _hidden_states(model, batches):
    out = {}
    for batch in batches:
        states = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].bool()
        for layer, h in enumerate(states):
            out.setdefault(layer, []).append(h[mask])
    return {layer: torch.cat(rows) for layer, rows in out.items()}


@pytest.mark.parametrize("architecture", ["bert", "llama", "deberta-v2", "qwen2"])
def test_a_dump_read_back_equals_the_captured_hidden_states(tmp_path, architecture):
    model, ids, batches = _setup(architecture)
    dump_representations(model, batches, tmp_path / "d", example_ids=ids, dtype="float32", progress=False)
    reader = DumpReader(tmp_path / "d")
    reader.verify()
    with torch.no_grad():
        expected = _hidden_states(model, batches)
    blocks = reader.layers[-1]
    assert reader.layers == list(range(3)) and reader.example_ids == ids
    assert reader.metadata["rows_per_layer"] == sum(reader.token_counts) == expected[0].shape[0]
    for layer in reader.layers:
        if architecture in ("llama", "qwen2") and layer == blocks:
            continue  # decoders' last hidden state is taken after the final norm; ours before it
        torch.testing.assert_close(reader.read_layer(layer), expected[layer], rtol=0, atol=0)
    half = tmp_path / "half"
    dump_representations(model, batches, half, example_ids=ids, dtype="float16", layers="1", progress=False)
    assert DumpReader(half).read_layer(1).dtype == torch.float16 and DumpReader(half).layers == [1]
    torch.testing.assert_close(DumpReader(half).read_layer(1).float(), expected[1], rtol=1e-3, atol=2e-3)


def test_padding_is_excluded_from_every_pooling():
    model, _, batches = _setup("bert", n=16, batch_size=16)
    recorder = RepresentationRecorder(model, pooling="tokens", layers=[2])
    lengths = batches[0]["attention_mask"].sum(1)
    shortest = int(lengths.argmin())
    assert lengths[shortest] < batches[0]["input_ids"].shape[1]  # the batch pads this example
    alone = {k: v[shortest : shortest + 1, : lengths[shortest]] for k, v in batches[0].items()}
    with torch.no_grad(), recorder:
        model(**batches[0])
        padded = recorder.take()[2]
        model(**alone)
        single = recorder.take()[2]
    start = int(lengths[:shortest].sum())
    torch.testing.assert_close(padded[start : start + int(lengths[shortest])], single, atol=1e-5, rtol=1e-5)
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    torch.testing.assert_close(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "first")[1], hidden[1, 1])  # left padding
    torch.testing.assert_close(pool(hidden, mask, "last")[0], hidden[0, 1])  # right padding
    torch.testing.assert_close(pool(hidden, mask, "last")[1], hidden[1, 3])


def test_pooled_reads_of_a_token_dump_equal_pooled_dumps(tmp_path):
    model, ids, batches = _setup("bert")
    dump_representations(model, batches, tmp_path / "tokens", dtype="float32", progress=False)
    dump_representations(model, batches, tmp_path / "mean", dtype="float32", pooling="mean", progress=False)
    dump_representations(model, batches, tmp_path / "first", dtype="float32", pooling="first", progress=False)
    tokens = DumpReader(tmp_path / "tokens")
    for pooling in ("mean", "first"):
        torch.testing.assert_close(
            tokens.read_layer(2, pooling), DumpReader(tmp_path / pooling).read_layer(2), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(FileFormatError, match="only a 'tokens' dump can be pooled"):
        DumpReader(tmp_path / "mean").read_layer(2, "first")


class _Interrupt(RuntimeError):
    pass


def test_an_interrupted_dump_resumes_at_the_next_missing_shard_and_equals_an_uninterrupted_one(tmp_path):
    model, ids, batches = _setup("bert")
    dump_representations(model, batches, tmp_path / "whole", example_ids=ids, progress=False)
    calls = []

    def fail_on_third_batch(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise _Interrupt

    handle = model.register_forward_pre_hook(fail_on_third_batch)
    with pytest.raises(_Interrupt):
        dump_representations(model, batches, tmp_path / "resumed", example_ids=ids, progress=False)
    handle.remove()
    written = sorted(p.name for p in (tmp_path / "resumed").glob("shard-*.safetensors"))
    assert written == ["shard-00000.safetensors", "shard-00001.safetensors"]
    with pytest.raises(FileFormatError, match="unfinished dump"):
        DumpReader(tmp_path / "resumed")
    first_shard = (tmp_path / "resumed" / written[0]).stat().st_mtime_ns
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    dump_representations(model, batches, tmp_path / "resumed", example_ids=ids, progress=False)
    handle.remove()
    assert len(forwards) == len(batches) - 2  # only the missing shards were computed
    assert (tmp_path / "resumed" / written[0]).stat().st_mtime_ns == first_shard
    whole, resumed = DumpReader(tmp_path / "whole"), DumpReader(tmp_path / "resumed")
    for layer in whole.layers:
        assert torch.equal(whole.read_layer(layer), resumed.read_layer(layer))
    strip = {"created"}
    meta_whole = {k: v for k, v in whole.metadata.items() if k not in strip}
    assert meta_whole == {k: v for k, v in resumed.metadata.items() if k not in strip}


def test_lora_with_zero_b_has_cka_one_and_cosine_one_at_every_layer():
    model, _, batches = _setup("bert")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value", "dense"]))
    for pooling in ("tokens", "mean"):
        results = measure_drift(peft_model, batches, pooling=pooling)
        assert sorted(results) == [0, 1, 2]
        for r in results.values():
            assert r.cka == pytest.approx(1, abs=1e-6) and r.cosine_mean == pytest.approx(1, abs=1e-6)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    moved = measure_drift(peft_model, batches, pooling="mean")
    assert moved[0].cka == pytest.approx(1, abs=1e-6)  # embeddings carry no adapter
    assert moved[2].cka < 0.999 and moved[2].cosine_mean < 0.999


def test_drift_from_dumps_equals_live_drift_and_pairs_dumps_of_different_batch_sizes(tmp_path):
    model, ids, batches = _setup("bert", n=40, batch_size=8)
    other, _, _ = _setup("bert", seed=1)
    _, _, batches_of_16 = _setup("bert", n=40, batch_size=16)
    dump_representations(model, batches, tmp_path / "base", example_ids=ids, dtype="float32", progress=False)
    dump_representations(other, batches_of_16, tmp_path / "other", example_ids=ids, dtype="float32", progress=False)
    from_dumps = compare_dumps(tmp_path / "base", tmp_path / "other", pooling="mean", progress=False)
    live = measure_drift(other, batches, base=tmp_path / "base", pooling="mean")
    for layer in from_dumps:
        assert from_dumps[layer].cka == pytest.approx(live[layer].cka, abs=1e-6)
        assert from_dumps[layer].cka < 0.99  # a different random model: the test can tell them apart
    same = compare_dumps(tmp_path / "base", tmp_path / "base", progress=False)
    assert all(r.cka == pytest.approx(1, abs=1e-9) for r in same.values())


def _rewrite_metadata(path, **changes):
    meta = json.loads((path / "metadata.json").read_text())
    meta.update(changes)
    (path / "metadata.json").write_text(json.dumps(meta))


def test_unpaired_dumps_are_refused_and_name_the_first_mismatch(tmp_path):
    model, ids, batches = _setup("bert")
    base = tmp_path / "base"
    dump_representations(model, batches, base, example_ids=ids, progress=False)
    for name, changes, message in (
        ("ids", {"example_ids": ["x", *ids[1:]]}, r"example ids differ \(first at example 0"),
        ("counts", {"token_counts": [99, *DumpReader(base).token_counts[1:]]}, "token counts differ"),
        ("layers", {"layers": [0, 1]}, r"holds layers \[0, 1, 2\] but .* holds \[0, 1\]"),
    ):
        shutil.copytree(base, tmp_path / name)
        _rewrite_metadata(tmp_path / name, **changes)
        with pytest.raises(FileFormatError, match=message):
            compare_dumps(base, tmp_path / name, progress=False)
    _, fewer_ids, fewer = _setup("bert", n=32)
    dump_representations(model, fewer, tmp_path / "fewer", example_ids=fewer_ids, progress=False)
    with pytest.raises(FileFormatError, match="has 40 examples, .* has 32"):
        compare_dumps(base, tmp_path / "fewer", progress=False)
    llama, _, llama_batches = _setup("llama")
    dump_representations(llama, llama_batches, tmp_path / "llama", example_ids=ids, progress=False)
    with pytest.raises(FileFormatError, match="come from different models"):
        compare_dumps(base, tmp_path / "llama", progress=False)
    with pytest.raises(FileFormatError, match="come from different models"):
        measure_drift(llama, llama_batches, base=base)


def test_a_truncated_shard_is_named(tmp_path):
    model, ids, batches = _setup("bert")
    dump_representations(model, batches, tmp_path / "d", progress=False)
    shard = tmp_path / "d" / "shard-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(FileFormatError, match="shard-00002.safetensors is .* bytes but its sidecar records"):
        DumpReader(tmp_path / "d")


def test_resuming_with_other_settings_or_data_is_refused_and_overwrites_nothing(tmp_path):
    model, ids, batches = _setup("bert")
    out = tmp_path / "d"
    dump_representations(model, batches[:2], out, progress=False)
    _rewrite_metadata(out, complete=False)  # as if interrupted
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunDirectoryError, match="unfinished dump made with pooling='tokens' \\(now 'mean'\\)"):
        dump_representations(model, batches[:2], out, pooling="mean", progress=False)
    _, _, other_batches = _setup("bert", n=80, batch_size=8)
    with pytest.raises(RunDirectoryError, match="holds other examples"):
        dump_representations(model, other_batches[5:7], out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    dump_representations(model, batches[:2], out, progress=False)  # same settings: resumes, completes
    with pytest.raises(RunDirectoryError, match="already holds a complete representation dump"):
        dump_representations(model, batches[:2], out, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="not empty and holds no dump metadata.json"):
        dump_representations(model, batches, tmp_path / "busy", progress=False)


def test_pooling_that_does_not_fit_the_architecture_is_refused(tmp_path):
    llama, _, llama_batches = _setup("llama")
    bert, _, batches = _setup("bert")
    with pytest.raises(ConfigError, match="pooling 'first' does not fit llama, a decoder"):
        dump_representations(llama, llama_batches, tmp_path / "a", pooling="first", progress=False)
    with pytest.raises(ConfigError, match="pooling 'last' does not fit bert, an encoder"):
        measure_drift(bert, batches, base=tmp_path / "b", pooling="last")
    with pytest.raises(ConfigError, match="pooling 'max' is not one of"):
        RepresentationRecorder(bert, pooling="max")
    with pytest.raises(ConfigError, match="layers \\[7\\] do not exist"):
        RepresentationRecorder(bert, layers="1,7")
    assert not (tmp_path / "a").exists()


def test_layers_whose_rows_do_not_vary_give_nan_with_a_warning_not_a_crash(tmp_path, caplog):
    import math

    llama, ids, batches = _setup("llama")  # every example ends with the same token: layer 0 'last' rows are equal
    dump_representations(llama, batches, tmp_path / "d", example_ids=ids, pooling="last", progress=False)
    with caplog.at_level("WARNING"):
        results = compare_dumps(tmp_path / "d", tmp_path / "d", progress=False)
    assert math.isnan(results[0].cka) and results[1].cka == pytest.approx(1)
    assert "layer 0: CKA is NaN: CKA is undefined" in caplog.text
