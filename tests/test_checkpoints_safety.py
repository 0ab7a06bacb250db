"""Malicious checkpoints are refused before anything in them runs.

Every payload below would write a file or run a shell command if unpickled with ``pickle.load`` (the first
test shows that it does). The readers refuse each one with an error naming the file and the offending global
or opcode, and the marker file never appears.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import re
import subprocess
import zipfile

import numpy as np
import pytest

from erniem_np import ErnieMModel
from erniem_np.checkpoints import CheckpointError, UnsafePickleError, open_checkpoint
from erniem_np.checkpoints.pdparams_file import read_pdparams
from erniem_np.checkpoints.torch_file import read_torch
from erniem_np.checkpoints.unpickler import NUMPY_GLOBALS, unpickle


class Shell:
    """Unpickling this runs ``touch <marker>`` in a shell."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Popen(Shell):
    def __reduce__(self):
        return subprocess.Popen, (["sh", "-c", f"touch {self.marker}"],)


class WriteFile(Shell):
    """Unpickling this writes a file with exec."""

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


class Eval(Shell):
    """Dressed as Paddle's LoDTensor reduce (builtins.eval), but with an expression that writes a file."""

    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w')", {})


class OpenFile(Shell):
    def __reduce__(self):
        return open, (self.marker, "w")


PAYLOADS = {"os.system": Shell, "subprocess.Popen": Popen, "exec": WriteFile, "eval": Eval, "open": OpenFile}
# What each error names (protocol 2 pickles spell some modules the Python 2 way: __builtin__, commands).
REFUSED = {"os.system": r"posix\.system", "subprocess.Popen": r"(subprocess|commands)\.Popen",
           "exec": r"(builtins|__builtin__)\.exec", "eval": r"eval", "open": r"io\.open"}  # fmt: skip


def state_dict_with(payload) -> dict:
    """A plausible Paddle state dict with the payload hidden among real arrays."""
    return {"embeddings.word_embeddings.weight": np.ones((5, 4), np.float32), "evil": payload,
            "encoder.layers.0.norm1.weight": np.ones(4, np.float32)}  # fmt: skip


@pytest.mark.parametrize("kind", PAYLOADS)
def test_the_payloads_are_live(tmp_path, kind):
    marker = tmp_path / "marker"
    obj = pickle.loads(pickle.dumps(PAYLOADS[kind](marker), protocol=4))
    if kind == "subprocess.Popen":
        obj.wait()
    if kind == "open":
        obj.close()
    assert marker.exists(), "the payload should act when unpickled by pickle.loads"


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", PAYLOADS)
def test_pdparams_payloads_are_refused_and_nothing_runs(tmp_path, kind, protocol):
    marker = tmp_path / "marker"
    path = tmp_path / "model_state.pdparams"
    path.write_bytes(pickle.dumps(state_dict_with(PAYLOADS[kind](marker)), protocol=protocol))
    with pytest.raises(UnsafePickleError) as e:
        read_pdparams(str(path))
    msg = str(e.value)
    assert str(path) in msg and "nothing from the file was executed" in msg or "not evaluated" in msg, msg
    assert re.search(REFUSED[kind], msg), msg
    assert not marker.exists()
    # also through from_pretrained
    (tmp_path / "config.json").write_text('{"vocab_size": 5, "hidden_size": 4, "num_attention_heads": 1}')
    with pytest.raises(UnsafePickleError):
        ErnieMModel.from_pretrained(tmp_path)
    assert not marker.exists()


def _torch_zip(path, data_pkl: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("kind", PAYLOADS)
def test_torch_zip_payloads_are_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "marker"
    path = tmp_path / "pytorch_model.bin"
    _torch_zip(path, pickle.dumps({"embeddings.word_embeddings.weight": PAYLOADS[kind](marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match=REFUSED[kind]) as e:
        read_torch(str(path))
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_legacy_torch_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "pytorch_model.bin"
    with open(path, "wb") as f:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        pickle.dump({"w": Shell(marker)}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        read_torch(str(path))
    assert not marker.exists()


def test_a_payload_in_the_first_legacy_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps(Shell(marker), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        read_torch(str(path))
    assert not marker.exists()


def test_persistent_ids_are_refused_in_pdparams(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage" if isinstance(obj, bytes) else None

    buf = io.BytesIO()
    P(buf, protocol=4).dump({"a": b"x" * 10})
    path = tmp_path / "x.pdparams"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent id"):
        read_pdparams(str(path))


def test_torch_persistent_ids_must_name_a_storage_type(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "not a type", "0", "cpu", 4) if isinstance(obj, bytes) else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"a": b"x"})
    _torch_zip(tmp_path / "m.bin", buf.getvalue())
    with pytest.raises(UnsafePickleError, match="malformed storage id"):
        read_torch(str(tmp_path / "m.bin"))


def test_build_on_an_allowed_function_is_refused():
    # GLOBAL numpy.core.multiarray._reconstruct, then BUILD {'__defaults__': ...}: would patch our stand-in
    target = NUMPY_GLOBALS[("numpy.core.multiarray", "_reconstruct")]
    before = target.__defaults__
    payload = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n}X\x0c\x00\x00\x00__defaults__)sb."
    with pytest.raises(UnsafePickleError, match="BUILD on a function"):
        unpickle(io.BytesIO(payload), path="payload", allowed=NUMPY_GLOBALS)
    assert target.__defaults__ is before and not hasattr(target, "__dict__") or "__defaults__" not in target.__dict__


@pytest.mark.parametrize("opcode, payload", [
    ("NEWOBJ", b"\x80\x02ccollections\nOrderedDict\n)\x81."),
    ("INST", b"(icollections\nOrderedDict\n."),
    ("OBJ", b"\x80\x02(ccollections\nOrderedDict\no."),
])  # fmt: skip
def test_opcodes_that_instantiate_classes_are_refused(opcode, payload):
    with pytest.raises(UnsafePickleError, match=f"opcode {opcode}"):
        unpickle(io.BytesIO(payload), path="payload", allowed=NUMPY_GLOBALS)


def test_the_extension_registry_is_not_reachable(tmp_path):
    marker = tmp_path / "marker"
    copyreg.add_extension("posix", "system", 0x7A)
    try:
        payload = b"\x80\x02\x82\x7aX" + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode() \
            + b"\x85R."  # fmt: skip
        pickle.loads(payload.replace(b"touch", b"true "))  # the registry works for plain pickle
        with pytest.raises(UnsafePickleError, match="opcode EXT1"):
            unpickle(io.BytesIO(payload), path="payload", allowed=NUMPY_GLOBALS)
    finally:
        copyreg.remove_extension("posix", "system", 0x7A)
    assert not marker.exists()


@pytest.mark.parametrize("spec", ["O8", "V8", "U4"])
def test_object_and_non_numeric_arrays_are_refused(tmp_path, spec):
    arr = np.array([1, "two", None], dtype=object) if spec == "O8" else np.zeros(2, dtype=spec)
    path = tmp_path / "x.pdparams"
    path.write_bytes(pickle.dumps({"a": arr}, protocol=4))
    with pytest.raises(UnsafePickleError, match="dtype"):
        read_pdparams(str(path))


def test_codecs_encode_only_rebuilds_latin1_bytes():
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        unpickle(io.BytesIO(payload), path="payload", allowed=NUMPY_GLOBALS)


def test_a_refused_checkpoint_names_the_file_through_every_entry_point(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "model_state.pdparams").write_bytes(pickle.dumps(state_dict_with(Shell(marker)), protocol=4))
    (tmp_path / "config.json").write_text("{}")
    for call in (lambda: open_checkpoint(tmp_path), lambda: ErnieMModel.from_pretrained(tmp_path)):
        with pytest.raises(CheckpointError, match=r"model_state\.pdparams: refused to load"):
            call()
    from erniem_np.cli import main

    assert main(["inspect", str(tmp_path)]) == 1
    assert not marker.exists()
