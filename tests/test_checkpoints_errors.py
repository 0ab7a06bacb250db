"""Broken checkpoints get errors that name the file and the key: missing and truncated files, malformed
safetensors headers, wrong shapes, a config that disagrees with the weights, an unknown head layout."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest

from erniem_np import ErnieMForQuestionAnswering, ErnieMForSequenceClassification, ErnieMModel
from erniem_np.checkpoints import CheckpointError, open_checkpoint, read_header, write_safetensors

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoints")


def copy(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, name), dst)
    (dst / "reference_outputs.safetensors").unlink()
    return dst


def raw_safetensors(path, header: dict, data: bytes = b"", pad: bool = True):
    blob = json.dumps(header).encode()
    if pad:
        blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return str(path)


# ------------------------------------------------------------------------------------------------ missing
def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory or file"):
        ErnieMModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json or model_config.json in"):
        ErnieMModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors, .* or model_state.pdparams in .*config\.json"):
        ErnieMModel.from_pretrained(tmp_path)


def test_missing_shard_and_index_disagreeing_with_shards(tmp_path):
    d = copy(tmp_path, "hf-seq_cls-sharded-safetensors")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    os.remove(d / "model-00003-of-00003.safetensors")
    with pytest.raises(FileNotFoundError, match=r"model.safetensors.index.json names the shard\(s\) "
                                                r"model-00003-of-00003.safetensors, missing from"):
        ErnieMForSequenceClassification.from_pretrained(d)
    d = copy(tmp_path / "b", "hf-seq_cls-sharded-safetensors")
    key = next(k for k, v in index["weight_map"].items() if v == "model-00001-of-00003.safetensors")
    index["weight_map"][key] = "model-00002-of-00003.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"index.json: says {key} is in model-00002-of-00003.safetensors, "
                                              "but it is in model-00001-of-00003.safetensors"):
        ErnieMForSequenceClassification.from_pretrained(d)
    (d / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="index.json: not a sharded-checkpoint index"):
        ErnieMForSequenceClassification.from_pretrained(d)


def test_git_lfs_pointer_instead_of_weights(tmp_path):
    d = copy(tmp_path, "hf-base-bin")
    (d / "pytorch_model.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: a Git LFS pointer"):
        ErnieMModel.from_pretrained(d)


# ------------------------------------------------------------------------------------------------ truncated
@pytest.mark.parametrize("name, file, match", [
    ("hf-base-safetensors", "model.safetensors", (r"model.safetensors: cannot read safetensors file: truncated: "
                                                  r"tensor '[\w.]+' needs data bytes")),
    ("hf-base-bin", "pytorch_model.bin", r"pytorch_model.bin: not a readable zip archive .* may be truncated"),
    ("hf-base-legacy-bin", "pytorch_model.bin", r"pytorch_model.bin: truncated or corrupt: storage \d+"),
    ("paddle-base", "model_state.pdparams", (r"model_state.pdparams: truncated: the pickle ends before its STOP "
                                            r"opcode \(truncated: \d+ bytes requested at offset \d+ of \d+\)")),
])  # fmt: skip
def test_truncated_files_name_the_file_and_where(tmp_path, name, file, match):
    d = copy(tmp_path, name)
    data = (d / file).read_bytes()
    (d / file).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=match):
        ErnieMModel.from_pretrained(d)


def test_truncated_pdparams_names_the_tensor_being_read(tmp_path):
    import pickle

    state = {"embeddings.word_embeddings.weight": np.ones((300, 64), np.float32),
             "encoder.layers.0.linear1.weight": np.ones((64, 256), np.float32)}  # fmt: skip
    data = pickle.dumps(state, protocol=4)
    (tmp_path / "model_state.pdparams").write_bytes(data[: len(data) - 1000])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"model_state.pdparams: truncated: the pickle ends before its STOP "
                                              r"opcode while reading 'encoder.layers.0.linear1.weight'"):
        ErnieMModel.from_pretrained(tmp_path)


def test_truncated_storage_inside_a_torch_zip(tmp_path):
    import zipfile

    d = copy(tmp_path, "hf-base-bin")
    src = zipfile.ZipFile(d / "pytorch_model.bin")
    with zipfile.ZipFile(d / "cut.bin", "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            data = src.read(info)
            z.writestr(info.filename, data[: len(data) // 2] if info.filename.endswith("data/0") else data)
    src.close()
    os.replace(d / "cut.bin", d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: storage pytorch_model/data/0 has \d+ bytes, "
                                              r"its tensors need \d+"):
        ErnieMModel.from_pretrained(d)


# ------------------------------------------------------------------------------------------------ headers
F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header, data, match", [
    ({"a": F32}, b"\x00" * 4, r"truncated: tensor 'a' needs data bytes 0..8 but the file holds only 4"),
    ({"a": F32}, b"\x00" * 12, r"4 bytes follow the last tensor"),
    ({"a": {**F32, "dtype": "F8_E4M3"}}, b"\x00" * 8, r"tensor 'a': unsupported dtype 'F8_E4M3'"),
    ({"a": {**F32, "shape": [3]}}, b"\x00" * 8, (r"tensor 'a': data_offsets \[0, 8\] span 8 bytes, but F32 \(3,\) "
                                                r"needs 12")),
    ({"a": {**F32, "shape": [-2]}}, b"\x00" * 8, r"tensor 'a': shape must be a list of non-negative integers"),
    ({"a": {**F32, "data_offsets": [0]}}, b"\x00" * 8, r"tensor 'a': data_offsets must be two"),
    ({"a": F32, "b": {**F32, "data_offsets": [4, 12]}}, b"\x00" * 12, (r"tensor 'b' \(bytes 4..12\) overlaps "
                                                                      r"tensor 'a'")),
    ({"a": F32, "b": {**F32, "data_offsets": [12, 20]}}, b"\x00" * 20, r"a gap of 4 bytes before tensor 'b'"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\x00" * 8, r"tensor 'a': an entry must hold exactly dtype, shape"),
    ({"__metadata__": {"format": 1}, "a": F32}, b"\x00" * 8, r"__metadata__ must map strings to strings"),
    ([1, 2], b"", r"the header is a JSON list, not an object"),
])  # fmt: skip
def test_safetensors_headers_are_validated(tmp_path, header, data, match):
    path = raw_safetensors(tmp_path / "model.safetensors", header, data)
    with pytest.raises(CheckpointError, match=match) as e:
        read_header(path)
    assert str(e.value).startswith(f"{path}: cannot read safetensors file: ")


def test_safetensors_header_size_json_and_duplicates(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="fewer than the 8-byte header length"):
        read_header(str(p))
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="exceeds 100000000 bytes"):
        read_header(str(p))
    p.write_bytes(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(CheckpointError, match="truncated: the header needs 100 bytes but only 2 follow"):
        read_header(str(p))
    p.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="not UTF-8 JSON"):
        read_header(str(p))
    blob = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], ' \
           b'"data_offsets": [4, 8]}}'  # fmt: skip
    p.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="the name 'a' appears twice"):
        read_header(str(p))


def test_our_writer_output_passes_the_validator_and_the_safetensors_package(tmp_path):
    from safetensors.numpy import load_file

    arrays = {"h": np.arange(3, dtype=np.float16), "f": np.ones((2, 3), np.float32), "i": np.arange(5),
              "b": np.array([True, False]), "e": np.zeros((0, 4), np.float32)}  # fmt: skip
    path = str(tmp_path / "x.safetensors")
    write_safetensors(path, arrays, metadata={"format": "pt"})
    entries, meta, data_start, _ = read_header(path)
    assert meta == {"format": "pt"} and data_start % 8 == 0
    assert all((e["begin"] - data_start) % np.dtype(arrays[k].dtype).itemsize == 0 for k, e in entries.items())
    back = load_file(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)


# ------------------------------------------------------------------------------------------------ shapes
def test_wrong_shape_names_the_file_and_key(tmp_path):
    d = copy(tmp_path, "hf-base-safetensors")
    ckpt = open_checkpoint(d)
    arrays = ckpt.state_dict()
    arrays["encoder.layers.1.linear2.weight"] = arrays["encoder.layers.1.linear2.weight"][:, :30]
    write_safetensors(str(d / "model.safetensors"), arrays)
    with pytest.raises(ValueError, match=r"model.safetensors: ErnieMModel weights do not match the config: "
                                         r"wrong shape \(1\): encoder.layers.1.linear2.weight: \(24, 30\) "
                                         r"\(expected \(24, 37\)\)"):
        ErnieMModel.from_pretrained(d)


@pytest.mark.parametrize("field, value, key", [
    ("hidden_size", 32, "embeddings.word_embeddings.weight"),
    ("vocab_size", 100, "embeddings.word_embeddings.weight"),
    ("max_position_embeddings", 30, "embeddings.position_embeddings.weight"),
    ("num_hidden_layers", 3, r"encoder.layers.1.[\w.]+"),
])  # fmt: skip
def test_config_and_weights_disagreeing(tmp_path, field, value, key):
    for name, weights in (("hf-base-bin", "pytorch_model.bin"), ("paddle-base", "model_state.pdparams")):
        d = copy(tmp_path, name)
        cfg = json.loads((d / "config.json").read_text())
        cfg[field] = value
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=rf"the config and the weights disagree: {field} is {value} in "
                                                  rf".*{name}/config.json but \d+ in the weights \({key} has shape "
                                                  rf".* in .*{weights}\)"):
            ErnieMModel.from_pretrained(d)


def test_label_count_disagreeing(tmp_path):
    d = copy(tmp_path, "hf-seq_cls-safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b"}
    cfg.pop("label2id", None)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json gives 2 labels but classifier.weight has shape "
                                              r"\(3, 24\) in .*model.safetensors"):
        ErnieMForSequenceClassification.from_pretrained(d)
    # a config that records no labels at all takes the count from the weights (Paddle's QA config, for one)
    for k in ("id2label", "label2id"):
        cfg.pop(k, None)
    (d / "config.json").write_text(json.dumps(cfg))
    assert ErnieMForSequenceClassification.from_pretrained(d).config.num_labels == 3


# ------------------------------------------------------------------------------------------------ head layout
def test_unknown_head_layout(tmp_path):
    d = copy(tmp_path, "hf-qa-safetensors")
    arrays = open_checkpoint(d).state_dict()
    arrays["span_classifier.weight"] = np.zeros((2, 24), np.float32)
    write_safetensors(str(d / "model.safetensors"), arrays)
    with pytest.raises(CheckpointError, match=r"model.safetensors: unknown head layout: 1 key\(s\) are not ErnieM "
                                              r"parameters: span_classifier.weight"):
        ErnieMForQuestionAnswering.from_pretrained(d)
    arrays.pop("span_classifier.weight")
    arrays["classifier.weight"], arrays["classifier.bias"] = np.zeros((2, 24), np.float32), np.zeros(2, np.float32)
    write_safetensors(str(d / "model.safetensors"), arrays)
    with pytest.raises(CheckpointError, match=r"unknown head layout: the weights hold classifier, qa_outputs"):
        ErnieMForQuestionAnswering.from_pretrained(d)


def test_architecture_and_head_disagreeing(tmp_path):
    d = copy(tmp_path, "paddle-uiem")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["ErnieMForSequenceClassification"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"the config says ErnieMForSequenceClassification but the weights "
                                              r"hold a linear_end/linear_start head"):
        ErnieMModel.from_pretrained(d)


def test_paddle_names_in_an_hf_file_are_refused(tmp_path):
    d = copy(tmp_path, "hf-base-safetensors")
    arrays = open_checkpoint(d).state_dict()
    arrays = {k.replace("self_attn.self_attn.", "self_attn."): v for k, v in arrays.items()}
    write_safetensors(str(d / "model.safetensors"), arrays)
    with pytest.raises(CheckpointError, match=r"encoder.layers.0.self_attn.[qkv]_proj.\w+ has Paddle's q/k/v naming "
                                              r"in an HF-format file"):
        ErnieMModel.from_pretrained(d)


def test_not_a_state_dict(tmp_path):
    import pickle

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model_state.pdparams").write_bytes(pickle.dumps([np.zeros(3, np.float32)], protocol=4))
    with pytest.raises(CheckpointError, match=r"model_state.pdparams: holds a pickled list, not a state dict"):
        ErnieMModel.from_pretrained(tmp_path)
    (tmp_path / "model_state.pdparams").write_bytes(pickle.dumps({"epoch": 3}, protocol=4))
    with pytest.raises(CheckpointError, match=r"model_state.pdparams: entry 'epoch' is a int, not an array"):
        ErnieMModel.from_pretrained(tmp_path)
    (tmp_path / "model_state.pdparams").write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        ErnieMModel.from_pretrained(tmp_path)
