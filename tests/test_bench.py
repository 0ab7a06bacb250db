"""The benchmark harness (erniem_np/bench.py, ``erniem-np bench``): it runs, and its batch is the one it says.

No timing is asserted here: speed is measured by running the benchmark, never by tests. This runs the harness
end to end on the 2-layer toy size (workers, turns, tables, files) so that the documented command keeps working.
"""

from __future__ import annotations

import json
import os

import pytest

from erniem_np import bench
from erniem_np.cli import main as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_stored_mixed_lengths_are_the_fixture_corpus_lengths():
    assert bench.corpus_lengths(ROOT) == bench.MIXED_LENGTHS


def test_bench_runs_end_to_end_on_the_tiny_size(tmp_path, capsys):
    out = tmp_path / "results"
    impls = ["erniem-np numba", "erniem-np numpy"]
    code = cli(["bench", "--size", "tiny", "--impls", ",".join(impls), "--reps", "2", "--pause", "0",
                "--threads", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert list(data["results"]) == impls
    assert data["meta"]["size"] == "tiny" and data["meta"]["shape"]["layers"] == 2
    for impl, r in data["results"].items():
        assert r["peak_rss_mb"] > 0 and r["load_s"] > 0, impl
        assert 0 <= r["check_max_abs_diff"] <= bench.CHECK_TOLERANCE, impl  # checked before it was timed
        assert r["thread_env"] == bench.thread_env(1), (impl, r["thread_env"])  # set before numpy loads OpenBLAS
        for w in bench.WORKLOADS:
            rounds = 2  # mixed64 takes min(reps, 3)
            assert len(r[w]["times_s"]) == rounds and all(t > 0 for t in r[w]["times_s"]), (impl, w)
            assert r[w]["median_s"] > 0 and r[w]["spread"][0] <= 1 <= r[w]["spread"][1], (impl, w)
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| erniem-np")]
    assert len(rows) == len(impls) * len(bench.WORKLOADS), table
    assert "ErnieM-tiny" in table and "vs torch" in table and "RSS / weights" in table
    assert (out / "results.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "ErnieM-tiny" in printed
    # the kernels were compiled into the cache before the workers loaded (their peak RSS is the model's), or
    # the run said that the cache is off
    assert "compiling erniem-np's kernels into the cache" in printed or "the kernel cache is off" in printed


def test_the_kernel_cache_is_warmed_in_a_process_of_its_own(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    bench.warm_kernel_cache(["torch eager", "erniem-np numpy"], 2)
    assert calls == []  # nothing of erniem-np's compiles for them
    bench.warm_kernel_cache(["erniem-np numba", "onnxruntime", "erniem-np int8"], 2)
    from erniem_np.kernels import settings

    if settings.CACHE_DIR is None:
        assert calls == [] and "the kernel cache is off" in capsys.readouterr().out
        return
    ((cmd, kw),) = calls
    assert cmd[-1] == "import erniem_np; erniem_np.warmup(); erniem_np.warmup(int8=True)"
    assert kw["check"] and all(kw["env"][k] == "2" for k in bench.thread_env(2))


def test_bench_rejects_an_unknown_implementation(tmp_path, capsys):
    assert cli(["bench", "--size", "tiny", "--impls", "erniem-np numba,tensorflow", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown implementation(s) ['tensorflow']" in err and "erniem-np numba" in err


@pytest.mark.parametrize("flag, value", [("--reps", "0"), ("--threads", "0"), ("--pause", "-1")])
def test_bench_rejects_bad_counts(tmp_path, capsys, flag, value):
    assert cli(["bench", "--size", "tiny", flag, value, "--out", str(tmp_path)]) == 1
    assert "--reps and --threads must be at least 1" in capsys.readouterr().err


def test_an_implementation_that_computes_something_else_is_not_timed(tmp_path, capsys, monkeypatch):
    """Every implementation's output on the check batch is compared with erniem-np's NumPy layers before
    anything is timed; one that differs is dropped with a message (here the reference is perturbed, so all
    are dropped and the run fails with one line)."""
    real = bench.reference_output
    monkeypatch.setattr(bench, "reference_output", lambda ckpt, vocab: real(ckpt, vocab) + 0.5)
    code = cli(["bench", "--size", "tiny", "--impls", "erniem-np numpy", "--reps", "1", "--pause", "0",
                "--threads", "1", "--out", str(tmp_path)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1 and "no implementation computes the reference output" in err
    assert "not timing erniem-np numpy: its output differs from erniem-np's NumPy layers by 0.5" in out


@pytest.mark.parametrize("impl", ["torch eager", "onnxruntime"])
def test_the_frameworks_compute_the_same_output(tmp_path, capsys, impl):
    """torch eager and the ONNX export pass the check (the export once traced the mask as position ids)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if impl == "onnxruntime":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    code = cli(["bench", "--size", "tiny", "--impls", impl, "--reps", "1", "--pause", "0", "--threads", "1",
                "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and f"{impl} computes the same output" in out, out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["results"][impl]["check_max_abs_diff"] <= bench.CHECK_TOLERANCE


def _script(name):
    """A script of scripts/bench, loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pool_runs_takes_the_median_of_every_call_of_every_run(tmp_path, capsys, monkeypatch):
    pool_runs = _script("pool_runs")
    meta = {"size": "base", "threads": 2}
    runs = [{"meta": meta, "results": {"a": {"W": {"times_s": [1.0, 2.0, 9.0]}, "load_s": 1.0},
                                       "b": {"W": {"times_s": [4.0, 4.0, 4.0]}}}},
            {"meta": meta, "results": {"a": {"W": {"times_s": [3.0, 3.0]}}, "b": {"W": {"times_s": [8.0, 8.0]}}}}]
    # pooled a: 1, 2, 3, 3, 9 -> 3 (the medians of the runs' medians would be 2 and 3); b: 4, 4, 4, 8, 8 -> 4
    assert pool_runs.pooled_medians(runs) == {"a": {"W": 3.0}, "b": {"W": 4.0}}
    paths = []
    for i, run in enumerate(runs + [{"meta": {"size": "tiny", "threads": 2}, "results": {}}]):
        paths.append(str(tmp_path / f"run{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(run, f)
    monkeypatch.setattr("sys.argv", ["pool_runs.py", *paths[:2]])
    pool_runs.main()
    assert "2 runs pooled" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["pool_runs.py", *paths])
    with pytest.raises(SystemExit, match="different sizes"):
        pool_runs.main()
    words = '{"meta": {"size": "base", "threads": 2}, "results": {"a": {"W": {"times_s": ["x"]}}}}'
    for name, text in (("broken.json", '{"meta": {}'), ("words.json", words)):
        (tmp_path / name).write_text(text)
        monkeypatch.setattr("sys.argv", ["pool_runs.py", str(tmp_path / name)])
        with pytest.raises(SystemExit, match=f"{name} is not a results.json"):
            pool_runs.main()


def test_kernel_ab_times_a_copy_of_a_kernel_module_and_refuses_one_that_computes_something_else(tmp_path, capsys):
    """scripts/bench/kernel_ab.py: a copy of kernels/norm.py is loaded, put where the layers use norm, gives
    the same bits and is timed; a copy whose LayerNorm doubles its output is not timed (which also shows the
    candidate's code is the code that runs); the layers point at the package's modules again afterwards."""
    from erniem_np.kernels import norm

    from erniem_np import fused

    kernel_ab = _script("kernel_ab")
    with open(os.path.join(ROOT, "kernels", "norm.py")) as f:
        source = f.read()
    copy = tmp_path / "norm.py"
    copy.write_text(source)
    args = ["--backend", "numba", "--tiny", "--shapes", "1x8", "--reps", "2"]
    kernel_ab.main([str(copy), *args])
    out = capsys.readouterr().out
    assert "1x8: the same bits" in out and "candidate / package per round" in out, out
    doubled = tmp_path / "doubled.py"
    changed = source.replace("    return out.reshape(shape)\n", "    return (out * 2).reshape(shape)\n")
    assert changed != source
    doubled.write_text(changed)
    with pytest.raises(SystemExit) as exit_info:
        kernel_ab.main([str(doubled), "--replaces", "norm", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "computes something else" in err and "not timed" in err, err
    assert fused.norm is norm


@pytest.mark.parametrize("argv, message", [
    (["missing.py"], "must be an existing .py file"),
    (["{tmp}/raises.py", "--replaces", "norm"], "cannot load"),
    (["{tmp}/raises.py"], "--replaces must be one of"),
    (["{tmp}/raises.py", "--replaces", "norm", "--shapes", "9"], "a shape is BxL"),
    (["{tmp}/raises.py", "--replaces", "norm", "--reps", "0"], "--reps must be"),
    (["{tmp}/raises.py", "--replaces", "norm", "--backend", "fp16"], "--backend must be"),
    (["{tmp}/raises_lines.py", "--replaces", "norm"], "cannot load"),
])  # fmt: skip
def test_kernel_ab_gives_one_line_and_exit_1_on_bad_input(tmp_path, capsys, argv, message):
    kernel_ab = _script("kernel_ab")
    (tmp_path / "raises.py").write_text("raise RuntimeError('broken on purpose')\n")
    (tmp_path / "raises_lines.py").write_text("raise RuntimeError('first line\\nsecond line\\nthird')\n")
    with pytest.raises(SystemExit) as exit_info:
        kernel_ab.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and message in err and len(err.strip().splitlines()) == 1, err
