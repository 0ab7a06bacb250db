"""Hostile and broken checkpoint files: each is refused with one error naming the problem, in bounded time and
memory, before anything large is allocated; and ``erniem-np convert`` never rewrites its source or leaves a
partial file.

The torch zips and pickles are written byte by byte here (no torch needed). A load that could run away if a
check were missing (exponential time, gigabytes) runs in a child process whose address space is capped at
1 GiB and whose run time is capped too; it must come back with one line on stderr and exit code 1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erniem_np import ErnieMConfig, ErnieMModel
from erniem_np.checkpoints import CheckpointError, convert_checkpoint, inspect_checkpoint, open_checkpoint, read_header
from erniem_np.checkpoints.pdparams_file import read_pdparams
from erniem_np.checkpoints.torch_file import read_torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "checkpoints")
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "bpe")
ADDRESS_SPACE = 1 << 30  # the child needs about 300 MB; every hostile file below asks for more than 1 GiB


def copy(tmp_path, name, dst=None):
    dst = tmp_path / (dst or name)
    shutil.copytree(os.path.join(FIXTURES, name), dst)
    (dst / "reference_outputs.safetensors").unlink()
    return dst


def cli(*args, timeout: float = 60, file_size: int | None = None) -> subprocess.CompletedProcess:
    """``erniem-np ARGS`` in a child with at most ADDRESS_SPACE bytes of memory (and, with ``file_size``, no file
    written past that many bytes, as on a full disk)."""
    limits = f"resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))\n"
    if file_size is not None:
        limits += f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size}, {file_size}))\n"
    code = f"import resource, sys\n{limits}from erniem_np.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=ROOT, check=False)  # fmt: skip
    r.seconds = time.monotonic() - start
    return r


def refused(r: subprocess.CompletedProcess, *patterns: str) -> str:
    """Exit code 1 and one line on stderr, matching every pattern; no traceback."""
    err = r.stderr.strip()
    assert r.returncode == 1 and "Traceback" not in err and "\n" not in err, err[-3000:]
    assert err.startswith("erniem-np: error: "), err
    for p in patterns:
        assert re.search(p, err), f"{p!r} not in {err!r}"
    return err


def digest(directory) -> dict[str, str]:
    return {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in sorted(os.listdir(directory))}


# ------------------------------------------------------------------------------------------ torch zip, by hand
def _int(n: int) -> bytes:  # LONG1: any size, any sign
    e = pickle.encode_long(n)
    return b"\x8a" + bytes([len(e)]) + e


def _str(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _tuple(items) -> bytes:  # MARK ... TUPLE
    return b"(" + b"".join(items) + b"t"


STORAGE_TYPE = {"float32": b"FloatStorage", "float16": b"HalfStorage", "int64": b"LongStorage"}


def data_pkl(tensors: dict) -> bytes:
    """A protocol-2 pickle of ``OrderedDict(name -> _rebuild_tensor_v2(storage, offset, size, stride, ...))``,
    as torch.save writes it; ``tensors[name] = (storage key, dtype, storage numel, offset, size, stride)``."""
    out = [b"\x80\x02ccollections\nOrderedDict\n)R("]
    for name, (key, dtype, numel, offset, size, stride) in tensors.items():
        pid = _tuple([_str("storage"), b"ctorch\n" + STORAGE_TYPE[dtype] + b"\n", _str(key), _str("cpu"),
                      _int(numel)]) + b"Q"  # fmt: skip
        args = _tuple([pid, _int(offset), _tuple(map(_int, size)), _tuple(map(_int, stride)), b"\x89",
                       b"ccollections\nOrderedDict\n)R"])  # fmt: skip
        out.append(_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"R")
    out.append(b"u.")
    return b"".join(out)


def zip_archive(members: list[dict]) -> bytes:
    """A zip written field by field. Each member: ``name``, ``data`` (as stored in the file), ``method`` (0
    stored, 8 deflated), ``size`` (declared inflated size) and ``crc``, each defaulting to what ``data`` stored
    has; or ``same_as`` (an earlier member's index): a second directory entry for that member's bytes."""
    body, central, offsets = io.BytesIO(), [], []
    for m in members:
        name = m["name"].encode()
        if "same_as" in m:
            first = members[m["same_as"]]
            offset = offsets[m["same_as"]]
            m = {**first, "name": m["name"]}
        else:
            offset = body.tell()
            data = m["data"]
            method, size, crc = m.get("method", 0), m.get("size", len(data)), m.get("crc", zlib.crc32(data))
            body.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
                                   len(name), 0) + name + data)  # fmt: skip
        offsets.append(offset)
        data = m["data"]
        method, size, crc = m.get("method", 0), m.get("size", len(data)), m.get("crc", zlib.crc32(data))
        central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                                   size, len(name), 0, 0, 0, 0, 0, offset) + name)  # fmt: skip
    start = body.tell()
    directory = b"".join(central)
    body.write(directory)
    body.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central), len(directory), start, 0))
    return body.getvalue()


def torch_zip(path, tensors: dict, storages: dict[str, bytes | dict]) -> str:
    """A torch.save zip: ``archive/data.pkl`` from ``tensors`` (see data_pkl), each storage a member
    ``archive/data/<key>`` (bytes, or a zip_archive member dict without its name)."""
    members = [{"name": "archive/data.pkl", "data": data_pkl(tensors)},
               {"name": "archive/byteorder", "data": b"little"}, {"name": "archive/version", "data": b"3\n"}]
    for key, data in storages.items():
        if isinstance(data, dict) and "same_as" in data:  # a second directory entry for another storage's bytes
            data = {"same_as": next(i for i, m in enumerate(members) if m["name"] == f"archive/data/{data['same_as']}")}
        members.append({"name": f"archive/data/{key}", **(data if isinstance(data, dict) else {"data": data})})
    with open(path, "wb") as f:
        f.write(zip_archive(members))
    return str(path)


def valid_weights() -> dict[str, np.ndarray]:
    return open_checkpoint(os.path.join(FIXTURES, "hf-base-safetensors")).state_dict()


def torch_checkpoint(directory, replace: dict | None = None, storages_extra: dict | None = None) -> str:
    """``directory/pytorch_model.bin`` (+ config.json) holding the hf-base weights, each tensor contiguous in
    its own storage; ``replace[name] = (key, dtype, numel, offset, size, stride)`` swaps in a tensor."""
    os.makedirs(directory, exist_ok=True)
    shutil.copy(os.path.join(FIXTURES, "hf-base-safetensors", "config.json"), directory)
    tensors, storages = {}, {}
    for i, (name, a) in enumerate(valid_weights().items()):
        tensors[name] = (str(i), "float32", a.size, 0, a.shape, tuple(s // 4 for s in a.strides))
        storages[str(i)] = a.tobytes()
    tensors.update(replace or {})
    storages.update(storages_extra or {})
    return torch_zip(os.path.join(directory, "pytorch_model.bin"), tensors, storages)


def test_the_hand_written_torch_zip_is_what_torch_writes(tmp_path):
    torch_checkpoint(tmp_path)
    ours = open_checkpoint(tmp_path).state_dict()
    for name, a in valid_weights().items():
        np.testing.assert_array_equal(ours[name], a)
    torch = pytest.importorskip("torch")
    theirs = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert sorted(theirs) == sorted(ours)
    for name, t in theirs.items():
        np.testing.assert_array_equal(t.numpy(), ours[name])


# ------------------------------------------------------------------------------------------ 1. shared references
def pdparams(directory, obj, config="paddle-base") -> str:
    """``directory/model_state.pdparams`` holding ``obj`` (pickled by Python, memo sharing kept), + a config."""
    os.makedirs(directory, exist_ok=True)
    shutil.copy(os.path.join(FIXTURES, config, "config.json"), directory)
    with open(os.path.join(directory, "model_state.pdparams"), "wb") as f:
        f.write(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=4))
    return str(directory)


def doubling(levels: int) -> list:
    """``[x, x]`` of ``[x, x]`` ... ``levels`` deep: 2**levels leaves, one list per level when pickled."""
    x = []
    for _ in range(levels):
        x = [x, x]
    return x


def test_shared_references_are_resolved_once(tmp_path):
    # a few hundred bytes naming a list tree of 2**40 leaves: refused at once, not walked
    d = pdparams(tmp_path, {"x": doubling(40)})
    assert os.path.getsize(os.path.join(d, "model_state.pdparams")) < 300
    r = cli("inspect", d, timeout=30)
    refused(r, r"model_state.pdparams: entry 'x' is a list, not an array")
    assert r.seconds < 10


W = "embeddings.word_embeddings.weight"


def _valid_paddle_state() -> dict:
    tensors = read_pdparams(os.path.join(FIXTURES, "paddle-base", "model_state.pdparams"))
    return {k: v.array() for k, v in tensors.items()}


@pytest.mark.parametrize("where, match", [
    ("tuple value", rf"entry '{W}' is a tuple, not an array"),
    ("slices list", rf"{W}x is saved in slices, but slice \[\[\[.*\]\]\] is missing"),
    ("OriginShape", rf"{W}x is saved in slices with OriginShape .*: every dimension must be an integer"),
    ("name table", None),
])  # fmt: skip
def test_shared_references_anywhere_in_a_pdparams(tmp_path, where, match):
    dag = doubling(40)
    state = _valid_paddle_state()
    if where == "tuple value":
        state[W] = ("word_embeddings", dag)
    elif where == "slices list":
        state["UnpackBigParamInfor@@"] = {W + "x": {"OriginShape": [99, 24], "slices": dag}}
    elif where == "OriginShape":
        state["UnpackBigParamInfor@@"] = {W + "x": {"OriginShape": dag, "slices": [W]}}
    else:
        state["StructuredToParameterName@@"] = {"a": dag}
    d = pdparams(tmp_path, state)
    r = cli("inspect", d, timeout=30)
    if match is None:  # not needed, so never looked into
        assert r.returncode == 0, r.stderr
    else:
        refused(r, r"model_state.pdparams: " + match)
    assert r.seconds < 10


def test_a_shared_tuple_as_a_dict_key_is_refused(tmp_path):
    # hashing a tuple walks its elements: 2**40 of them here
    out = b"\x80\x04}" + b")\x94"  # memo 0 = ()
    for i in range(40):
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86\x94"  # memo i + 1 = (memo i, memo i)
    d = pdparams(tmp_path, out + b"K\x01s.")
    r = cli("inspect", d, timeout=30)
    refused(r, r"model_state.pdparams: refused to load: a dict key or set member of type tuple")
    assert r.seconds < 10


def _reduce_reusing(func: bytes, args: bytes, times: int) -> bytes:
    """A protocol-4 pickle of ``{"w": [func(*args), func(*args), ...]}``, ``args`` one shared (memo) tuple."""
    out = b"\x80\x04}X\x01\x00\x00\x00w(" + func + b"\x94" + args + b"\x94R"  # MEMOIZE: memo 0, memo 1
    call = b"h\x00h\x01R"  # BINGET 0, BINGET 1, REDUCE
    return out + call * (times - 1) + b"ls."


@pytest.mark.parametrize("func, args", [
    (b"c_codecs\nencode\n", _tuple([_str("x" * 100_000), _str("latin1")])),  # 100 KB of latin1 text -> bytes
    (b"cbuiltins\ntuple\n", _tuple([b"](" + b"K\x01" * 50_000 + b"e"])),  # a list of 50,000 items -> a tuple
    (b"ccollections\nOrderedDict\n", _tuple([b"](" + (_str(".") + b"K\x01\x86") * 20_000 + b"e"])),  # 20,000 pairs
])  # fmt: skip
def test_a_shared_argument_called_many_times_is_bounded(tmp_path, func, args):
    # each call copies its argument: 20,000 calls would build gigabytes from a file of a few hundred KB
    d = pdparams(tmp_path, _reduce_reusing(func, args, 20_000))
    r = cli("inspect", d, timeout=60)
    refused(r, r"model_state.pdparams: refused to load: rebuilding the pickle would allocate more than")


@pytest.mark.parametrize("protocol", [2, 4])
def test_one_array_under_many_names_is_refused(tmp_path, protocol):
    # pickled once, then fetched from the memo for every name
    a = np.zeros(250_000, np.float32)
    d = pdparams(tmp_path, pickle.dumps({f"encoder.layers.{i}.norm1.weight": a for i in range(2_000)}, protocol))
    refused(cli("inspect", d), r"model_state.pdparams: entries 'encoder.layers.0.norm1.weight' and "
                               r"'encoder.layers.\d+.norm1.weight' share their data")


def test_hash_flooding_keys_and_memo_indices_are_refused(tmp_path):
    p = 2**61 - 1  # ints i and i + k*p hash alike: a dict of them takes quadratic time
    keys = b"".join(_int(1 + k * p) + b"K\x00" for k in range(1, 30_000))
    d = pdparams(tmp_path / "keys", b"\x80\x02}(" + keys + b"u.")
    refused(cli("inspect", d), r"refused to load: a dict key or set member of type int")
    puts = b"".join(b"K\x00p" + str(1 + k * p).encode() + b"\n0" for k in range(1, 30_000))  # PUT to colliding ids
    d = pdparams(tmp_path / "memo", b"\x80\x02" + puts + b"}.")
    refused(cli("inspect", d), r"refused to load: PUT to memo index")


# ------------------------------------------------------------------------------------------ 2. allocation bounds
@pytest.mark.parametrize("name", ["pooler.dense.weight", "encoder.layers.0.linear1.weight"])
def test_a_stride_0_tensor_is_refused_before_anything_is_allocated(tmp_path, name):
    # torch.zeros(1).expand(40000, 40000): 4 bytes in the file, 6.4 GB once copied
    torch_checkpoint(tmp_path / "src", replace={name: ("z", "float32", 1, 0, (40000, 40000), (0, 0))},
                     storages_extra={"z": b"\0" * 4})  # fmt: skip
    refused(cli("inspect", tmp_path / "src"), rf"pytorch_model.bin: tensor '{name}' has stride 0")
    refused(cli("convert", tmp_path / "src", tmp_path / "dst"), rf"tensor '{name}' has stride 0")
    assert not (tmp_path / "dst" / "model.safetensors").exists()


P = "pooler.dense.weight"
H = 24  # hidden size of the fixtures


@pytest.mark.parametrize("replace, storages, match", [
    ({P: ("z", "float32", 1, 0, (10**12,), (1,))}, {"z": b"\0" * 4}, r"reaches past its storage of 1 elements"),
    ({P: ("z", "float32", 1, 0, (10**12,), (0,))}, {"z": b"\0" * 4}, r"has stride 0"),
    ({P: ("z", "float32", 10**12, 0, (10**12,), (1,))}, {"z": b"\0" * 4},
     r"storage archive/data/z has 4 bytes, its tensors need 4000000000000"),
    ({P: ("z", "float32", 4000, 0, (2000, 2000), (1, 1))}, {"z": b"\0" * 16000}, r"its elements overlap"),
    ({P: ("z", "float32", H * H, 0, (H, H), (H, 1)), "pooler.dense.bias": ("z", "float32", H * H, 10, (H,), (1,))},
     {"z": b"\0" * 4 * H * H}, r"tensors 'pooler.dense.weight' and 'pooler.dense.bias' share elements of one storage"),
    ({P: ("z", "float32", 5, 0, (-5,), (1,))}, {"z": b"\0" * 20}, r"bad tensor geometry: .*size \(-5,\)"),
    ({P: ("z", "float32", 5, 0, (2**63,), (1,))}, {"z": b"\0" * 20},
     r"bad tensor geometry: .*size \(9223372036854775808,\)"),
    ({P: ("z", "float32", 5, -1, (5,), (1,))}, {"z": b"\0" * 20}, r"bad tensor geometry: offset -1"),
    ({P: ("z", "float32", 2**64, 0, (5,), (1,))}, {"z": b"\0" * 20}, r"malformed storage id"),
])  # fmt: skip
def test_every_tensor_is_checked_against_the_bytes_its_file_holds(tmp_path, replace, storages, match):
    torch_checkpoint(tmp_path / "src", replace=replace, storages_extra=storages)
    refused(cli("convert", tmp_path / "src", tmp_path / "dst"), r"pytorch_model.bin.*" + match)
    assert not (tmp_path / "dst" / "model.safetensors").exists()


@st.composite
def views(draw):
    dims = draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 12)), max_size=3))
    return draw(st.integers(0, 40)), draw(st.integers(0, 45)), tuple(n for n, _ in dims), tuple(s for _, s in dims)


@given(views())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_accepted_view_stays_inside_its_storage_and_repeats_no_element(tmp_path, view):
    numel, offset, size, stride = view
    path = torch_zip(tmp_path / "t.bin", {"t": ("0", "float32", numel, offset, size, stride)},
                     {"0": np.arange(numel, dtype=np.float32).tobytes()})  # fmt: skip
    reached = [offset + sum(i * s for i, s in zip(index, stride)) for index in np.ndindex(*size)]
    sound = len(set(reached)) == len(reached) and all(i < numel for i in reached)
    try:
        a = read_torch(path)["t"].array()
    except CheckpointError as e:
        # every unsound view is refused; a sound one only if its strides interleave (the check is conservative)
        assert not sound or "its elements overlap" in str(e), str(e)
        return
    assert sound and a.shape == size
    np.testing.assert_array_equal(a.ravel(), np.array(reached, np.float32))


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2), (0, 2, 1)])
def test_every_dimension_order_of_a_contiguous_tensor_is_accepted(tmp_path, order):
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5).transpose(order)
    stride = tuple(s // 4 for s in a.strides)
    path = torch_zip(tmp_path / "t.bin", {"t": ("0", "float32", 60, 0, a.shape, stride)},
                     {"0": np.arange(60, dtype=np.float32).tobytes()})  # fmt: skip
    np.testing.assert_array_equal(read_torch(path)["t"].array(), a)


def test_paddle_slices_must_not_reuse_an_array(tmp_path):
    a = np.zeros(1 << 18, np.float32)  # 1 MiB, pickled once
    names = [f"{W}@@.{i}" for i in range(1200)]
    state = {n: a for n in names} | {"UnpackBigParamInfor@@": {W: {"OriginShape": [1200 << 18], "slices": names}}}
    refused(cli("inspect", pdparams(tmp_path / "shared", state)), r"entries '.*@@.0' and '.*@@.\d+' share their data")
    # one array named 1200 times in the slice list
    state = {names[0]: a, "UnpackBigParamInfor@@": {W: {"OriginShape": [1200 << 18], "slices": [names[0]] * 1200}}}
    refused(cli("inspect", pdparams(tmp_path / "twice", state)), r"the slice '.*@@.0' is used twice")
    state = {names[0]: a, "UnpackBigParamInfor@@": {W: {"OriginShape": [99, 24], "slices": [names[0]]}}}
    refused(cli("inspect", pdparams(tmp_path / "size", state)), r"the slices of .* hold 262144 elements, its "
                                                                r"OriginShape \(99, 24\) needs 2376")


def test_paddle_slices_are_joined_only_when_read(tmp_path, monkeypatch):
    state = _valid_paddle_state()
    flat = state.pop(W).ravel()
    state |= {f"{W}@@.0": flat[:1000], f"{W}@@.1": flat[1000:],
              "UnpackBigParamInfor@@": {W: {"OriginShape": [99, 24], "slices": [f"{W}@@.0", f"{W}@@.1"]}}}  # fmt: skip
    path = os.path.join(pdparams(tmp_path, state), "model_state.pdparams")
    with monkeypatch.context() as m:
        m.setattr(np, "concatenate", lambda *a, **k: pytest.fail("joined while listing"))
        t = read_pdparams(path)[W]
        inspect_checkpoint(os.path.dirname(path))
    assert t.shape == (99, 24) and t.dtype == "float32"
    np.testing.assert_array_equal(t.array(), flat.reshape(99, 24))


def deflated_zeros(n_mib: int) -> bytes:
    """A raw deflate stream of ``n_mib`` MiB of zeros, about 1 KB per MiB, built without inflating anything."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    first = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # after a full flush every MiB compresses alike
    return first + block * (n_mib - 1) + c.flush()


def test_deflated_zeros_stream_is_what_it_claims():
    d = zlib.decompressobj(-15)
    assert d.decompress(deflated_zeros(5)) == bytes(5 << 20) and d.eof


def test_a_compressed_member_is_checked_against_its_storage_before_inflating(tmp_path):
    # 1.5 MB of deflate that inflates to 1.5 GiB, for a storage of 4 bytes
    n = 1536
    crc = 0
    for _ in range(n):
        crc = zlib.crc32(bytes(1 << 20), crc)
    bomb = {"data": deflated_zeros(n), "method": 8, "size": n << 20, "crc": crc}
    torch_checkpoint(tmp_path / "src", replace={P: ("z", "float32", 1, 0, (1,), (1,))}, storages_extra={"z": bomb})
    refused(cli("convert", tmp_path / "src", tmp_path / "dst"),
            r"storage archive/data/z is compressed and declares 1610612736 bytes inflated, but its storage holds 4: "
            r"refused before inflating")  # fmt: skip


def test_a_compressed_member_cannot_declare_more_than_deflate_produces(tmp_path):
    # 10**9 floats declared, matching the storage, from 1 KB of compressed data
    forged = {"data": deflated_zeros(1), "method": 8, "size": 4 * 10**9, "crc": 0}
    torch_checkpoint(tmp_path / "src", replace={P: ("z", "float32", 10**9, 0, (10**9,), (1,))},
                     storages_extra={"z": forged})  # fmt: skip
    refused(cli("convert", tmp_path / "src", tmp_path / "dst"), r"archive/data/z declares 4000000000 bytes inflated "
                                                                r"from \d+: more than deflate can produce")


def test_compressed_members_of_the_right_size_are_read(tmp_path):
    weights = valid_weights()
    tensors, storages = {}, {}
    for i, (name, a) in enumerate(weights.items()):
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        raw = a.tobytes()
        tensors[name] = (str(i), "float32", a.size, 0, a.shape, tuple(s // 4 for s in a.strides))
        storages[str(i)] = {"data": c.compress(raw) + c.flush(), "method": 8, "size": len(raw), "crc": zlib.crc32(raw)}
    os.makedirs(tmp_path / "src")
    shutil.copy(os.path.join(FIXTURES, "hf-base-safetensors", "config.json"), tmp_path / "src")
    torch_zip(tmp_path / "src" / "pytorch_model.bin", tensors, storages)
    with zipfile.ZipFile(tmp_path / "src" / "pytorch_model.bin") as z:
        assert z.testzip() is None  # a valid archive, by zipfile's own reading
    loaded = open_checkpoint(tmp_path / "src").state_dict()
    for name, a in weights.items():
        np.testing.assert_array_equal(loaded[name], a)


def test_zip_members_may_not_share_bytes(tmp_path):
    # two directory entries for one stored block: two storages from the same bytes
    a = valid_weights()["pooler.dense.weight"]
    torch_checkpoint(tmp_path / "src", replace={"pooler.dense.bias": ("alias", "float32", H, 0, (H,), (1,)),
                                                P: ("w", "float32", H * H, 0, (H, H), (H, 1))},
                     storages_extra={"w": a.tobytes(), "alias": {"same_as": "w"}})  # fmt: skip
    refused(cli("inspect", tmp_path / "src"), r"the zip members archive/data/(w|alias) and archive/data/(w|alias) "
                                              r"share bytes of the file")


# ------------------------------------------------------------------------------------------ 3. CRC-32
def _flip_inside(path, member: str, at: float = 0.5) -> None:
    """Flip one bit in the stored data of ``member`` of the zip at ``path``."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + int(info.compress_size * at)] ^= 0x04
    path.write_bytes(bytes(data))


def test_a_bit_flip_in_a_stored_tensor_is_caught_when_it_is_read(tmp_path):
    d = copy(tmp_path, "hf-base-bin")
    with zipfile.ZipFile(d / "pytorch_model.bin") as z:
        member = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename
    _flip_inside(d / "pytorch_model.bin", member)
    with pytest.raises(CheckpointError, match=rf"pytorch_model.bin: {member} is corrupt: its CRC-32 is [0-9a-f]{{8}}, "
                                              r"the archive records [0-9a-f]{8}"):
        open_checkpoint(d).state_dict()
    with pytest.raises(CheckpointError, match="CRC-32"):
        ErnieMModel.from_pretrained(d)
    refused(cli("convert", d, tmp_path / "dst"), rf"{member} is corrupt: its CRC-32")
    # listing reads no tensor data, so it does not see the flip (the check is made when the data is read)
    assert cli("inspect", d).returncode == 0


def test_a_bit_flip_in_data_pkl_is_one_clear_error(tmp_path):
    d = copy(tmp_path, "hf-base-bin")
    with zipfile.ZipFile(d / "pytorch_model.bin") as z:
        member = next(n for n in z.namelist() if n.endswith("data.pkl"))
    _flip_inside(d / "pytorch_model.bin", member, at=0.9)
    refused(cli("inspect", d), rf"pytorch_model.bin: cannot read {member}: Bad CRC-32")


def test_the_crc_of_a_shared_storage_is_checked_once(tmp_path, monkeypatch):
    import erniem_np.checkpoints.torch_file as tf

    calls = []
    check = tf._check_crc
    monkeypatch.setattr(tf, "_check_crc", lambda *a: calls.append(a[1].filename) or check(*a))
    w = np.arange(2 * H * H, dtype=np.float32)
    torch_checkpoint(tmp_path, replace={P: ("w", "float32", 2 * H * H, 0, (H, H), (H, 1)),
                                        "pooler.dense.bias": ("w", "float32", 2 * H * H, H * H, (H,), (1,))},
                     storages_extra={"w": w.tobytes()})  # fmt: skip
    sd = open_checkpoint(tmp_path).state_dict()
    np.testing.assert_array_equal(sd["pooler.dense.bias"], w[H * H : H * H + H])
    assert calls.count("archive/data/w") == 1 and len(calls) == len(set(calls))


# ------------------------------------------------------------------------------------------ 4. configuration
def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_an_invalid_recorded_flavor_is_refused(tmp_path):
    for name in ("paddle-base", "hf-base-safetensors"):
        d = copy(tmp_path, name)
        _edit_config(d, flavor="torch")
        with pytest.raises(CheckpointError, match=r"config.json: flavor must be one of hf, paddle, got 'torch'"):
            open_checkpoint(d)
    refused(cli("inspect", d), r"config.json: flavor must be one of hf, paddle, got 'torch'")
    _edit_config(d, flavor=None)  # null: not recorded
    assert open_checkpoint(d).flavor_source == "weights format"


@pytest.mark.parametrize("key, value, match", [
    ("id2label", ["a", "b"], r"id2label must map label ids to names .*got a list of 2 items"),
    ("id2label", "ab", r"id2label must map label ids to names .*got 'ab'"),
    ("id2label", {"zero": "a"}, r"id2label must map label ids to names, got the entry 'zero': 'a'"),
    ("label2id", ["a"], r"label2id must map label names to integer ids"),
    ("hidden_dropout_prob", "0.1", r"hidden_dropout_prob must be a number, got '0.1'"),
    ("classifier_dropout", [0.1], r"classifier_dropout must be a number"),
    ("pad_token_id", True, r"pad_token_id True is not an id"),
    ("layer_norm_eps", "1e-5", r"layer_norm_eps must be a positive number"),
    ("hidden_act", {"name": "gelu"}, r"hidden_act a JSON object of 1 items is not one of"),
    ("num_choices", 0, r"num_choices must be a positive integer"),
    ("vocab_size", 2**70, r"the config and the weights disagree: vocab_size is \d+ in \S+config.json"),
])  # fmt: skip
def test_config_values_of_the_wrong_type_name_the_file_and_key(tmp_path, key, value, match):
    d = copy(tmp_path, "hf-base-safetensors")
    _edit_config(d, **{key: value})
    with pytest.raises(CheckpointError, match=match) as e:
        open_checkpoint(d)
    assert str(d / "config.json") in str(e.value) and "\n" not in str(e.value)
    if (key, value) == ("id2label", ["a", "b"]):
        refused(cli("inspect", d), match)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=6)  # fmt: skip
FIELDS = [f for f in ErnieMConfig.__dataclass_fields__ if f != "extra"] + ["label2id", "num_classes", "init_args"]


@given(st.dictionaries(st.sampled_from(FIELDS), JSON, min_size=1, max_size=3))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_config_value_loads_or_is_refused_naming_the_file(tmp_path, changes):
    d = tmp_path / "ckpt"
    if not d.exists():
        copy(tmp_path, "hf-base-safetensors", "ckpt")
        original = (d / "config.json").read_text()
        (tmp_path / "original.json").write_text(original)
    cfg = json.loads((tmp_path / "original.json").read_text()) | changes
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        ckpt = open_checkpoint(d)
    except CheckpointError as e:
        assert str(e).startswith(str(d / "config.json")) or "the config and the weights disagree" in str(e), str(e)
        return
    c = ckpt.config
    assert all(type(getattr(c, k)) is int for k in ("vocab_size", "hidden_size", "num_labels", "pad_token_id"))
    assert c.flavor in ("hf", "paddle") and isinstance(c.hidden_act, str)
    assert c.id2label is None or all(type(k) is int and type(v) is str for k, v in c.id2label.items())


@pytest.mark.parametrize("key, value, match", [
    ("do_lower_case", "no", r"do_lower_case must be true or false, got 'no'"),
    ("model_max_length", "512", r"model_max_length must be a positive number, got '512'"),
    ("flavor", "torch", r"flavor must be one of hf, paddle, got 'torch'"),
    ("sep_token", 3, r"sep_token must be a non-empty string or an AddedToken"),
    ("mask_token", {"content": None}, r"mask_token must be a non-empty string or an AddedToken"),
])  # fmt: skip
def test_tokenizer_config_values_of_the_wrong_type_name_the_file_and_key(tmp_path, key, value, match):
    d = copy(tmp_path, "paddle-base")
    for name in os.listdir(TOKENIZER):
        shutil.copy(os.path.join(TOKENIZER, name), d)
    inspect_checkpoint(d)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(tc | {key: value}))
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json: " + match):
        inspect_checkpoint(d)
    with pytest.raises(CheckpointError, match=r"tokenizer_config.json: " + match):
        convert_checkpoint(d, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
    if key == "do_lower_case":
        refused(cli("inspect", d), r"tokenizer_config.json: " + match)


DEEP = "[" * 100_000


@pytest.mark.parametrize("name, target", [
    ("config.json", "hf-base-safetensors"),
    ("model.safetensors.index.json", "hf-base-sharded-safetensors"),
    ("pytorch_model.bin.index.json", "hf-base-sharded-bin"),
])  # fmt: skip
def test_deeply_nested_json_is_one_clear_error(tmp_path, name, target):
    d = copy(tmp_path, target)
    (d / name).write_text(DEEP)
    with pytest.raises(CheckpointError, match=rf"{name}: .*nests too deeply"):
        open_checkpoint(d)
    if name == "config.json":
        refused(cli("inspect", d), rf"{re.escape(name)}: .*nests too deeply")


def test_a_deeply_nested_safetensors_header_is_one_clear_error(tmp_path):
    d = copy(tmp_path, "hf-base-safetensors")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(DEEP)) + DEEP.encode())
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot read safetensors file: the header's JSON "
                                              r"nests too deeply"):
        open_checkpoint(d)


def test_a_deeply_nested_pdparams_is_one_clear_error(tmp_path):
    nested = b"]" * 100_000 + b"a" * 99_999  # 100,000 empty lists, each appended to the one below
    d = pdparams(tmp_path, b"\x80\x02}X\x01\x00\x00\x00x" + nested + b"s.")
    with pytest.raises(CheckpointError, match=r"model_state.pdparams: entry 'x' is a list, not an array"):
        open_checkpoint(d)


def test_a_dimension_of_2_to_the_63_is_one_clear_error(tmp_path):
    d = copy(tmp_path, "hf-base-safetensors")
    header = json.dumps({"pooler.dense.bias": {"dtype": "F32", "shape": [2**63, 0], "data_offsets": [0, 0]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(CheckpointError, match=r"tensor 'pooler.dense.bias': shape must be a list of non-negative "
                                              r"integers, got \[9223372036854775808, 0\]"):
        read_header(str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape must be a list of non-negative integers"):
        inspect_checkpoint(d)
    # a Paddle array whose shape says 2**63 elements
    raw = pickle.dumps({"w": np.zeros(2, np.float32)}, protocol=2)
    assert raw.count(b"K\x02\x85") == 1  # the shape (2,) in the array's state
    raw = raw.replace(b"K\x02\x85", _int(2**63) + b"\x85")
    d = pdparams(tmp_path / "p", raw)
    with pytest.raises(CheckpointError, match=r"model_state.pdparams: corrupt pickle \(while reading 'w'\): "
                                              r"ValueError: bad array shape: every dimension must be an integer in "
                                              r"\[0, 2\*\*62\]"):
        inspect_checkpoint(d)


# ------------------------------------------------------------------------------------------ 5. convert's output
def with_tokenizer(d):
    for name in os.listdir(TOKENIZER):
        shutil.copy(os.path.join(TOKENIZER, name), d)
    return d


@pytest.mark.parametrize("name", ["hf-base-safetensors", "paddle-base"])
def test_a_destination_that_is_the_source_by_another_path_is_refused(tmp_path, name):
    src = with_tokenizer(copy(tmp_path, name, "src"))
    before = digest(src)
    os.symlink(src, tmp_path / "link")
    os.makedirs(tmp_path / "sub")
    weights = next(f for f in os.listdir(src) if f.startswith(("model", "pytorch")))
    # the directory by a symlink, by a path through another directory; a single weights file into its directory
    for source, dst in ((src, tmp_path / "link"), (src, tmp_path / "sub" / ".." / "src"), (src / weights, src)):
        with pytest.raises(CheckpointError, match=r"the destination is the source directory"):
            convert_checkpoint(source, dst, overwrite=True)
        assert digest(src) == before
    refused(cli("convert", src, tmp_path / "link", "--overwrite"), r"the destination is the source directory")
    assert digest(src) == before


def test_a_full_disk_leaves_no_partial_file(tmp_path):
    src = with_tokenizer(copy(tmp_path, "paddle-base", "src"))
    sp_size = os.path.getsize(src / "sentencepiece.bpe.model")
    limit = sp_size // 2  # every other output is smaller: the tokenizer model is the file that cannot be written
    assert all(os.path.getsize(src / n) < limit for n in os.listdir(src) if n != "sentencepiece.bpe.model")
    r = cli("convert", src, tmp_path / "dst", file_size=limit)
    assert r.returncode != 0
    assert sorted(os.listdir(tmp_path / "dst")) == []  # nothing renamed into place, no temporary file left
    refused(cli("inspect", tmp_path / "dst"), r"no config.json")

    # over an existing conversion: it stays whole
    assert cli("convert", src, tmp_path / "old").returncode == 0
    before = digest(tmp_path / "old")
    r = cli("convert", src, tmp_path / "old", "--overwrite", "--dtype", "float16", file_size=limit)
    assert r.returncode != 0 and digest(tmp_path / "old") == before
    info = json.loads(cli("inspect", tmp_path / "old", "--json").stdout)
    assert "sentencepiece.bpe.model" in info["tokenizer_files"] and set(info["dtypes"]) == {"float32"}


def test_a_write_error_is_one_clear_line(tmp_path):
    src = with_tokenizer(copy(tmp_path, "paddle-base", "src"))
    r = cli("convert", src, tmp_path / "dst", file_size=os.path.getsize(src / "sentencepiece.bpe.model") // 2)
    refused(r, rf"{tmp_path / 'dst'}: cannot write the converted checkpoint: File too large; no file there was changed")


@pytest.mark.parametrize("value", ["no", "false", 0, 1, [], {}])
def test_a_tokenizer_config_value_of_the_wrong_type_is_refused_when_loading(tmp_path, value):
    """`"do_lower_case": "no"` lower-cased (a non-empty string is true); now the file and key are named."""
    import json
    import shutil

    from erniem_np.tokenizer import ErnieMTokenizer

    src = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizer", "unigram")
    shutil.copytree(src, tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": value}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: do_lower_case must be true or false"):
        ErnieMTokenizer.from_pretrained(str(tmp_path / "tok"))
    with pytest.raises(TypeError, match="do_lower_case must be True or False"):
        ErnieMTokenizer(os.path.join(src, "sentencepiece.bpe.model"), os.path.join(src, "vocab.txt"),
                        do_lower_case=value)  # fmt: skip
