"""Real checkpoint files from both references load without torch or paddle and reproduce the reference outputs.

The fixtures in tests/fixtures/checkpoints/ were written by the references' own save functions
(scripts/reference/make_checkpoint_fixtures_{hf,paddle}.py; see the README there), each with the outputs the reference
computed after loading its own save. Also here: the name map, memory mapping, conversion, the command line and
the hub cache. Malicious pickles: test_checkpoints_safety.py; broken files: test_checkpoints_errors.py.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
from goldens import GOLDEN_DIR, PROFILE_FP32, compare, probe_kind
from safetensors import safe_open

from erniem_np import (
    ErnieMConfig,
    ErnieMForInformationExtraction,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)
from erniem_np.checkpoints import convert_checkpoint, inspect_checkpoint, open_checkpoint, read_header
from erniem_np.checkpoints.names import paddle_to_hf, strip_base_prefix
from erniem_np.checkpoints.pdparams_file import read_pdparams
from erniem_np.checkpoints.tensors import StoredTensor, bfloat16_to_float32, float32_to_bfloat16
from erniem_np.cli import main as cli
from erniem_np.parity.bundle import load_bundle

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "checkpoints")
CLASSES = {
    "base": ErnieMModel, "seq_cls": ErnieMForSequenceClassification, "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering, "mc": ErnieMForMultipleChoice, "ie": ErnieMForInformationExtraction,
}  # fmt: skip
TOKENIZER = {"sentencepiece.bpe.model": b"\x00sp", "vocab.txt": "[CLS]\n[PAD]\n[SEP]\n[UNK]\n",
             "tokenizer_config.json": '{"do_lower_case": false}', "special_tokens_map.json": "{}"}  # fmt: skip


def fixture_names() -> list[str]:
    return sorted(n for n in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, n,
                                                                                "reference_outputs.safetensors")))


class Fixture:
    def __init__(self, name: str):
        self.name, self.dir = name, os.path.join(FIXTURES, name)
        with safe_open(os.path.join(self.dir, "reference_outputs.safetensors"), "np") as f:
            self.meta = f.metadata()
            self.tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open)
        self.head = self.meta["head"]
        self.cases = json.loads(self.meta["cases"])
        self.load = json.loads(self.meta["load"])

    @property
    def cls(self):
        return CLASSES[self.head]

    def targets(self) -> list[str]:
        """What to pass to from_pretrained: the directory, or the bare files it holds."""
        return [os.path.join(self.dir, f) for f in self.load.get("files", [])] or [self.dir]

    def check(self, model, label: str = "") -> None:
        problems = []
        for case in self.cases:
            inputs = {k: self.tensors[f"{case['name']}/{k}"] for k in case["inputs"]}
            out = model(**inputs)
            for name in case["outputs"]:
                msg = compare(f"{self.name}{label} {case['name']}/{name}", out[name],
                              self.tensors[f"{case['name']}/{name}"], *PROFILE_FP32[probe_kind(name)])  # fmt: skip
                if msg:
                    problems.append(msg)
        assert not problems, "\n".join(problems)


NAMES = fixture_names()


def test_fixtures_cover_every_format_head_and_reference():
    metas = [Fixture(n).meta for n in NAMES]
    for ref in ("hf", "paddle"):
        heads = {m["head"] for m in metas if m["reference"] == ref}
        assert heads == set(CLASSES), f"{ref}: fixtures for {sorted(heads)}"
    kinds = " ".join(NAMES)
    for part in ("safetensors", "bin", "sharded-safetensors", "sharded-bin", "float16", "bfloat16", "legacy",
                 "paddle-bare", "paddle-tuple", "paddle-uiem-legacy"):
        assert part in kinds, f"no fixture for {part}"
    for head in CLASSES:  # every class sharded by transformers, in both formats
        for fmt in ("safetensors", "bin"):
            assert f"hf-{head}-sharded-{fmt}" in NAMES, f"no sharded {fmt} fixture for {head}"
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(FIXTURES) for f in fs)
    assert total < 3.5e6, f"the fixtures take {total / 1e6:.2f} MB"


@pytest.mark.parametrize("name", NAMES)
def test_fixture_reproduces_the_reference_outputs(name):
    fx = Fixture(name)
    for target in fx.targets():
        model = fx.cls.from_pretrained(target, config=fx.load.get("config"), backend="numpy")
        assert model.config.flavor == fx.meta["flavor"], f"{name}: flavor {model.config.flavor}"
        fx.check(model, f" ({os.path.basename(target)})" if target != fx.dir else "")


@pytest.mark.parametrize("name", ["hf-seq_cls-bin", "paddle-seq_cls", "paddle-uiem-legacy", "hf-mc-float16-safetensors",
                                  "paddle-seq_cls-bfloat16", "hf-token_cls-sharded-bin", "paddle-qa"])
def test_converted_fixture_loads_fast_path_and_reproduces_outputs(tmp_path, name):
    fx = Fixture(name)
    src = tmp_path / "src"
    shutil.copytree(fx.dir, src)
    for f, content in TOKENIZER.items():
        (src / f).write_bytes(content if isinstance(content, bytes) else content.encode())
    dst = tmp_path / "native"
    ckpt = convert_checkpoint(src, dst)
    assert sorted(os.listdir(dst)) == sorted(["config.json", "model.safetensors", *TOKENIZER])
    assert ckpt.format == "safetensors" and ckpt.flavor == fx.meta["flavor"] and ckpt.flavor_source == "config"
    config = json.loads((dst / "config.json").read_text())
    assert config["flavor"] == fx.meta["flavor"] and config["architectures"] == [fx.cls.architecture]
    with safe_open(str(dst / "model.safetensors"), "np") as f:  # the safetensors package reads our writer
        assert f.metadata()["format"] == "pt"
    fx.check(fx.cls.from_pretrained(dst, backend="numpy"), " (converted)")


def test_convert_to_half_precision_rounds_like_torch(tmp_path):
    fx = Fixture("hf-ie-bin")
    for dtype, code in (("float16", "F16"), ("bfloat16", "BF16")):
        ckpt = convert_checkpoint(fx.dir, tmp_path / dtype, dtype=dtype)
        entries = read_header(ckpt.files[0])[0]
        assert {e["dtype"] for e in entries.values()} == {dtype}, code
    # torch's own bfloat16 save of the same weights holds the same bits as our float32 -> bfloat16 rounding
    ours = open_checkpoint(tmp_path / "bfloat16").state_dict()
    torch_bf16 = open_checkpoint(os.path.join(FIXTURES, "hf-ie-bfloat16-bin")).state_dict()
    for k, v in torch_bf16.items():
        np.testing.assert_array_equal(ours[k], v, err_msg=k)


def test_bfloat16_conversion_is_exact_and_rounds_to_nearest_even():
    x = np.array([1.0, -2.5, 1 + 2**-8, 1 + 3 * 2**-8, 3.0e38, np.inf, 1e-40], np.float32)
    bits = float32_to_bfloat16(x)
    back = bfloat16_to_float32(bits)
    np.testing.assert_array_equal(back[:2], x[:2])
    assert back[2] == 1.0 and back[3] == 1 + 4 * 2**-8  # ties to even
    assert np.isinf(back[5]) and np.isnan(bfloat16_to_float32(float32_to_bfloat16(np.float32([np.nan])))).all()


# ------------------------------------------------------------------------------------------------ name map
def test_paddle_name_map_matches_the_golden_scripts_independent_map():
    """tests/goldens/paddle-tiny holds Paddle's own state dicts (written by make_goldens_paddle.py, which
    renames and transposes by itself) beside the HF-layout weights: the package's map must agree."""
    g = load_bundle(os.path.join(GOLDEN_DIR, "paddle-tiny.safetensors"))
    hf = g.weights()  # HF names; the UIE-M head under "ie."
    for prefix, head in (("paddle_state/", "base"), ("paddle_state/uiem/", "ie")):
        state = {k[len(prefix) :]: g.array(k) for k in g.tensors
                 if k.startswith(prefix) and "/" not in k[len(prefix) :]}  # fmt: skip
        stored = {k: StoredTensor("paddle-tiny", k, "float32", v.shape, lambda v=v: v) for k, v in state.items()}
        mapped = paddle_to_hf(strip_base_prefix(stored, "paddle-tiny"), head)
        assert len(mapped) == len(state)
        for name, t in mapped.items():
            want = hf["ie." + name if name.startswith("linear_") else name]
            a = t.array(np.float32)
            assert a.flags.c_contiguous, name
            np.testing.assert_array_equal(a, want, err_msg=f"{prefix}{name}")


def test_unknown_head_layout_and_paddle_quirks_are_named(tmp_path):
    fx = Fixture("paddle-qa")
    info = inspect_checkpoint(fx.dir)
    assert info["head"] == "qa" and info["head_source"] == "config"
    assert any("classifier -> qa_outputs" in n for n in info["notes"])
    assert any("dropped the pooler" in n for n in info["notes"])
    tuple_form = inspect_checkpoint(os.path.join(FIXTURES, "paddle-tuple"))  # its config names no class
    assert tuple_form["head_source"] == "guess"


def test_a_head_checkpoint_loads_into_every_compatible_class():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = ErnieMModel.from_pretrained(os.path.join(FIXTURES, "paddle-qa"), backend="numpy")  # keeps its pooler
    assert base.config.flavor == "paddle" and "pooler.dense.weight" in base.state_dict()
    # a Paddle classifier checkpoint whose config names no class loads as whichever class asks for it
    tok = ErnieMForTokenClassification.from_pretrained(os.path.join(FIXTURES, "paddle-tuple"), backend="numpy")
    assert "ernie_m.pooler.dense.weight" not in tok.state_dict()


def test_ignored_position_ids_buffer_and_legacy_prefix(tmp_path):
    fx = Fixture("paddle-uiem-legacy")
    assert inspect_checkpoint(fx.dir)["config_file"].endswith("model_config.json")
    sd = open_checkpoint(fx.dir).tensors
    assert all(not k.startswith("encoder.encoder") for k in sd)
    # an old checkpoint's int64 position_ids buffer is dropped
    src = open_checkpoint(os.path.join(FIXTURES, "hf-base-safetensors"))
    arrays = src.state_dict()
    arrays["embeddings.position_ids"] = np.arange(20, dtype=np.int64)[None]
    shutil.copy(os.path.join(src.path, "config.json"), tmp_path)
    from erniem_np.checkpoints import write_safetensors

    write_safetensors(str(tmp_path / "model.safetensors"), arrays)
    ckpt = open_checkpoint(tmp_path)
    assert "embeddings.position_ids" not in ckpt.tensors and "ignored buffer" in " ".join(ckpt.notes)
    Fixture("hf-base-safetensors").check(ErnieMModel.from_pretrained(tmp_path, backend="numpy"))


def test_flavor_comes_from_the_weights_format_not_from_a_paddle_style_config(tmp_path):
    # susnato/ernie-m-base_pytorch: PaddleNLP's config.json (paddlenlp_version) with HF weights -> "hf"
    shutil.copytree(os.path.join(FIXTURES, "hf-base-bin"), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg.pop("transformers_version")
    cfg["paddlenlp_version"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert ErnieMConfig.from_pretrained(tmp_path / "m").flavor == "paddle"  # what the config alone suggests
    model = ErnieMModel.from_pretrained(tmp_path / "m", backend="numpy")
    assert model.config.flavor == "hf"
    Fixture("hf-base-bin").check(model)
    assert ErnieMModel.from_pretrained(tmp_path / "m", flavor="paddle", backend="numpy").config.flavor == "paddle"


def test_a_bare_file_needs_a_config_unless_its_shapes_name_a_checkpoint(tmp_path):
    from erniem_np.checkpoints.loader import PRESETS, _preset_for, _weights_shapes

    bare = os.path.join(FIXTURES, "paddle-bare", "ernie_m_tiny.pdparams")
    with pytest.raises(FileNotFoundError, match=r"no config.json or model_config.json beside .*pass config="):
        open_checkpoint(bare)
    with pytest.raises(ValueError, match="several weight files"):
        open_checkpoint(os.path.join(FIXTURES, "paddle-bare"))
    # ernie-m-base's shapes select its config (checked on shapes alone: no 1.1 GB file needed)
    shapes = {"embeddings.word_embeddings.weight": (250002, 768), "embeddings.position_embeddings.weight": (514, 768),
              "encoder.layers.0.linear1.weight": (3072, 768), "encoder.layers.11.linear1.weight": (3072, 768)}
    stored = {k: StoredTensor("f", k, "float32", s, lambda: None) for k, s in shapes.items()}
    assert _preset_for(_weights_shapes(stored)) == PRESETS["ernie-m-base"]
    stored.pop("encoder.layers.11.linear1.weight")
    assert _preset_for(_weights_shapes(stored)) is None


# ------------------------------------------------------------------------------------------------ memory map
def _root(a):
    """The object that owns an array's memory (a memoryview is followed to its exporter)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


@pytest.mark.parametrize("name", ["hf-base-safetensors", "hf-base-bin"])  # (legacy .bin data is unaligned)
def test_float32_weights_stay_mapped_and_private(tmp_path, name):
    shutil.copytree(os.path.join(FIXTURES, name), tmp_path / "m")
    model = ErnieMModel.from_pretrained(tmp_path / "m", backend="numpy")
    w = model.state_dict()["embeddings.word_embeddings.weight"]
    assert isinstance(_root(w), mmap.mmap), f"{name}: the word embeddings were copied"
    weights_file = next(p for p in (tmp_path / "m").iterdir() if p.name not in ("config.json",
                                                                                "reference_outputs.safetensors"))
    before = weights_file.read_bytes()
    w[0, 0] += 1.0  # copy-on-write: the array is writable, the file unchanged
    assert weights_file.read_bytes() == before
    # saving over the mapped checkpoint replaces the file atomically; the loaded model keeps working
    model.save_pretrained(tmp_path / "m")
    reloaded = ErnieMModel.from_pretrained(tmp_path / "m", backend="numpy")
    np.testing.assert_array_equal(reloaded.state_dict()["embeddings.word_embeddings.weight"], w)


def test_paddle_linear_weights_are_transposed_copies_and_the_rest_stays_mapped():
    ckpt = open_checkpoint(os.path.join(FIXTURES, "paddle-base"))
    sd = ckpt.state_dict()
    assert all(a.flags.c_contiguous and a.flags.aligned for a in sd.values())
    w1 = sd["encoder.layers.0.linear1.weight"]
    assert w1.shape == (96, 24) and _root(w1) is not None and not isinstance(_root(w1), mmap.mmap)


def test_sliced_big_arrays_of_protocol_2_saves_are_joined(tmp_path):
    import pickle

    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    flat = a.ravel()
    state = {"embeddings.word_embeddings.weight@@.0": flat[:10], "embeddings.word_embeddings.weight@@.1": flat[10:],
             "UnpackBigParamInfor@@": {"embeddings.word_embeddings.weight": {
                 "OriginShape": (4, 6), "slices": ["embeddings.word_embeddings.weight@@.0",
                                                   "embeddings.word_embeddings.weight@@.1"]}}}  # fmt: skip
    with open(tmp_path / "x.pdparams", "wb") as f:
        pickle.dump(state, f, protocol=2)
    t = read_pdparams(str(tmp_path / "x.pdparams"))
    np.testing.assert_array_equal(t["embeddings.word_embeddings.weight"].array(), a)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_inspect_and_convert(tmp_path, capsys):
    src = os.path.join(FIXTURES, "paddle-uiem")
    assert cli(["inspect", src]) == 0
    out = capsys.readouterr().out
    for text in ("format:       pdparams: model_state.pdparams", "ErnieMForInformationExtraction",
                 "flavor:       paddle (from the weights format)", "2 layers, hidden 24, 4 heads, FFN 96",
                 "parameters:   18,002 in 42 tensors", "float32 (42 tensors)", "no tokenizer files"):
        assert text in out, f"{text!r} not in:\n{out}"
    assert cli(["inspect", "--json", src]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 18002 and info["flavor"] == "paddle" and info["size_on_disk"] > 0
    assert cli(["convert", src, str(tmp_path / "n")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli(["convert", src, str(tmp_path / "n")]) == 1
    assert "already holds config.json, model.safetensors" in capsys.readouterr().err
    assert cli(["convert", "--overwrite", "--dtype", "float16", "--quiet", src, str(tmp_path / "n")]) == 0
    assert cli(["inspect", str(tmp_path / "n")]) == 0
    out = capsys.readouterr().out
    assert "float16 (42 tensors)" in out and "flavor:       paddle (recorded in the config)" in out
    assert cli(["inspect", str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_cli_progress_is_shown_for_slow_steps_only():
    import io

    from erniem_np.cli import _Progress

    stream = io.StringIO()
    p = _Progress(stream)
    p("writing model.safetensors", 50, 100)
    assert stream.getvalue() == ""  # fast: nothing printed
    p.start -= 10
    p("writing model.safetensors", 600 << 20, 1200 << 20)
    p("writing model.safetensors", 1200 << 20, 1200 << 20)
    assert "writing model.safetensors:  50%" in stream.getvalue() and "100%" in stream.getvalue()


# ------------------------------------------------------------------------------------------------ hub
def _fake_cache(root, repo="org/ernie", revision="0123abc", fixture="hf-seq_cls-safetensors", ref="main"):
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / revision
    shutil.copytree(os.path.join(FIXTURES, fixture), snap)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / ref).write_text(revision)
    return snap


def test_hub_id_found_in_the_cache(tmp_path, monkeypatch):
    _fake_cache(tmp_path)
    model = ErnieMForSequenceClassification.from_pretrained("org/ernie", cache_dir=str(tmp_path), backend="numpy")
    Fixture("hf-seq_cls-safetensors").check(model)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert open_checkpoint("org/ernie").hub_id == "org/ernie"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    _fake_cache(tmp_path / "home" / "hub", revision="feed")
    assert open_checkpoint("org/ernie").path == str(tmp_path / "home" / "hub" / "models--org--ernie" / "snapshots" /
                                                    "feed")  # fmt: skip
    assert open_checkpoint("org/ernie", revision="feed").hub_id == "org/ernie"
    with pytest.raises(FileNotFoundError):
        open_checkpoint("org/ernie", revision="v2")
    # a snapshot directory itself is a local directory
    snap = tmp_path / "models--org--ernie" / "snapshots" / "0123abc"
    assert open_checkpoint(snap).hub_id is None


def test_hub_id_offline_message_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # whether or not it is installed
    with pytest.raises(FileNotFoundError) as e:
        ErnieMModel.from_pretrained("susnato/ernie-m-base_pytorch", cache_dir=str(tmp_path))
    msg = str(e.value)
    for text in ("not in the Hugging Face cache", "config.json", "model.safetensors", "pytorch_model.bin",
                 "model_state.pdparams", "sentencepiece.bpe.model", "vocab.txt",
                 str(tmp_path / "models--susnato--ernie-m-base_pytorch" / "snapshots"), "download=True",
                 "https://huggingface.co/susnato/ernie-m-base_pytorch"):
        assert text in msg, f"{text!r} not in {msg}"
    with pytest.raises(FileNotFoundError, match="huggingface_hub is not installed"):
        ErnieMModel.from_pretrained("susnato/ernie-m-base_pytorch", cache_dir=str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="bcebos.com.*uie_m_base"):
        ErnieMModel.from_pretrained("uie-m-base", cache_dir=str(tmp_path))
    # an incomplete snapshot (config only) is reported as such
    snap = _fake_cache(tmp_path, repo="org/partial")
    os.remove(snap / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ErnieMModel.from_pretrained("org/partial", cache_dir=str(tmp_path))


def test_hub_download_only_on_request_and_only_the_files_needed(tmp_path, monkeypatch):
    calls = []

    def list_repo_files(repo_id, revision=None):
        return ["README.md", "config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "convert.py"]

    def snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.append(sorted(allow_patterns))
        return str(_fake_cache(tmp_path / "cache", repo=repo_id))

    fake = types.ModuleType("huggingface_hub")
    fake.list_repo_files, fake.snapshot_download = list_repo_files, snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    with pytest.raises(FileNotFoundError):
        ErnieMForSequenceClassification.from_pretrained("org/remote", cache_dir=str(tmp_path / "cache"))
    assert calls == []  # no download without download=True
    model = ErnieMForSequenceClassification.from_pretrained("org/remote", cache_dir=str(tmp_path / "cache"),
                                                            download=True, backend="numpy")  # fmt: skip
    assert calls == [["config.json", "model.safetensors", "vocab.txt"]]  # one weights format, no scripts
    Fixture("hf-seq_cls-safetensors").check(model)
    ErnieMForSequenceClassification.from_pretrained("org/remote", cache_dir=str(tmp_path / "cache"), download=True)
    assert len(calls) == 1  # cached now: no second download


# ------------------------------------------------------------------------------------------------ isolation
def test_loading_every_fixture_imports_neither_torch_nor_paddle():
    code = (
        "import sys, json, os, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from erniem_np.checkpoints import open_checkpoint\n"
        f"root = {FIXTURES!r}\n"
        f"for n in {NAMES!r}:\n"
        "    ref = os.path.join(root, n, 'reference_outputs.safetensors')\n"
        "    load = json.loads(__import__('safetensors').safe_open(ref, 'np').metadata()['load'])\n"
        "    for t in [os.path.join(root, n, f) for f in load.get('files', [])] or [os.path.join(root, n)]:\n"
        "        open_checkpoint(t, config=load.get('config')).state_dict()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'paddle', 'paddlenlp', 'transformers')]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_row_reader_reads_the_rows_of_the_mapped_table(tmp_path, monkeypatch):
    """The word-embedding rows read with pread equal the mapped table's rows, also after the file is replaced;
    no reader where the rows would not be the stored ones (another dtype, a transpose) or for small tables."""
    from erniem_np.checkpoints import safetensors_file as stf

    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 7)).astype(np.float32)
    path = str(tmp_path / "t.safetensors")
    stf.write_safetensors(path, {"table": table, "small": table[:2]})
    assert stf.read_safetensors(path)[0]["table"].row_reader() is None  # below ROW_READER_MIN_BYTES
    monkeypatch.setattr(stf, "ROW_READER_MIN_BYTES", 0)
    tensors, _ = stf.read_safetensors(path)
    read = tensors["table"].row_reader(np.float32)
    ids = np.array([[5, 299, 0, 5], [17, 17, 3, 298]])
    assert np.array_equal(read(ids), table[ids]) and read(ids).dtype == np.float32
    assert read(np.zeros((2, 0), np.int64)).shape == (2, 0, 7)
    assert tensors["table"].row_reader(np.float64) is None
    assert tensors["table"].transpose().row_reader() is None
    assert stf.read_safetensors(path, use_mmap=False)[0]["table"].row_reader() is None
    with pytest.raises(IndexError, match=r"\[0, 300\)"):
        read(np.array([300]))
    stf.write_safetensors(path, {"table": -table, "small": table[:2]})  # renamed over the mapped file
    assert np.array_equal(read(ids), table[ids])  # the open descriptor still reads the old file


def test_model_reads_word_rows_from_the_file_with_the_same_numbers(tmp_path, monkeypatch):
    """from_pretrained of a mapped float32 checkpoint gathers word rows with the row reader (not through the
    mapping); the outputs are bit-identical to a model whose weights were read whole."""
    from erniem_np.checkpoints import safetensors_file as stf

    monkeypatch.setattr(stf, "ROW_READER_MIN_BYTES", 0)
    shutil.copytree(os.path.join(FIXTURES, "hf-base-safetensors"), tmp_path / "m")
    mapped = ErnieMModel.from_pretrained(str(tmp_path / "m"), backend="numpy")
    whole = ErnieMModel.from_pretrained(str(tmp_path / "m"), backend="numpy", mmap=False)
    from erniem_np.checkpoints.tensors import RowReadTable

    def table(model):
        return model.base_params["embeddings"]["word_embeddings"]["weight"]

    assert isinstance(table(mapped), RowReadTable) and isinstance(table(whole), np.ndarray)
    assert isinstance(table(ErnieMModel.from_pretrained(str(tmp_path / "m"), dtype=np.float64)), np.ndarray)
    assert np.asarray(table(mapped)) is table(mapped).array and table(mapped).shape == table(whole).shape
    calls = []
    reader = table(mapped).read_rows
    table(mapped).read_rows = lambda ids: calls.append(ids.shape) or reader(ids)
    ids = np.array([[0, 5, 9, 2, 1], [0, 7, 2, 1, 1]])
    a = mapped(input_ids=ids, output_hidden_states=True)
    b = whole(input_ids=ids, output_hidden_states=True)
    assert calls == [(2, 5)]
    assert all(np.array_equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states, strict=True))


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or not hasattr(mmap, "MADV_DONTNEED"),
                    reason="reads RssFile from /proc (Linux)")  # fmt: skip
def test_release_mapped_drops_the_pages_of_a_mapped_view_and_leaves_others(tmp_path):
    """After packing, the numba layers release the mapped pages under a weight: resident file pages fall by
    the array's size, its values read back unchanged (they reload from the file), and an array in memory is
    left alone."""
    from erniem_np.checkpoints.safetensors_file import map_file, release_mapped

    def rss_file_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))

    data = np.arange(8 << 20, dtype=np.float32)  # 32 MB
    path = tmp_path / "w.bin"
    data.tofile(path)
    buf = map_file(str(path))
    view = np.frombuffer(buf, dtype=np.float32).reshape(-1, 1024)[:, :]  # a view of a view of the mapping
    assert view.sum(dtype=np.float64) == data.sum(dtype=np.float64)  # every page touched, so resident
    before = rss_file_kb()
    release_mapped(view)
    after = rss_file_kb()
    assert before - after > 0.9 * data.nbytes / 1024, (before, after)
    np.testing.assert_array_equal(view.ravel(), data)
    in_memory = data.copy()
    release_mapped(in_memory)  # not mapped: nothing to release, nothing changed
    np.testing.assert_array_equal(in_memory, data)
