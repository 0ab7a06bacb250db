"""Load benchmark: time and resident memory of ``ErnieMModel.from_pretrained`` at ErnieM-base size.

    .venv/bin/python scripts/bench/bench_load.py [--dir DIR] [--repeat 5] [--formats safetensors,bin,pdparams]

Builds an ErnieM-base-sized random checkpoint (278,042,880 float32 parameters, ~1.11 GB) in DIR (default: a
temporary directory, deleted at the end unless --keep) in three formats:

* ``model.safetensors`` written by erniem_np's own writer;
* ``pytorch_model.bin`` written by ``torch.save`` in the HF reference environment (.venv-ref-hf);
* ``model_state.pdparams`` written by ``paddle.save`` in the Paddle reference environment (.venv-ref-paddle),
  with Paddle names and [in, out] Linear weights. Without that environment (or with --no-paddle) the file is
  written with ``pickle`` protocol 4 from NumPy arrays, which is the byte layout paddle.save produces.

Each file is read once first so the page cache is warm. Then every measurement runs in a fresh Python process
(numpy, erniem_np and the Numba kernels imported before the clock starts) and reports the load time, the
resident memory (VmRSS) before and after, and the peak (VmHWM). The table gives the median time over
``--repeat`` processes and the RSS figures of the median run; "after/file" is RSS after loading divided by the
file size (the target is < 30% for safetensors, with a load time <= 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np

from erniem_np.checkpoints.safetensors_file import write_safetensors
from erniem_np.config import ErnieMConfig
from erniem_np.parameters import base_parameter_shapes

HF_PY = ROOT / ".venv-ref-hf" / "bin" / "python"
PADDLE_PY = ROOT / ".venv-ref-paddle" / "bin" / "python"
BASE = ErnieMConfig()  # the defaults are ernie-m-base (docs/reference.md#c3-named-checkpoints)

TO_BIN = """
import sys, torch
from safetensors.torch import load_file
torch.save(load_file(sys.argv[1]), sys.argv[2])
"""

# Paddle: names with q/k/v directly under self_attn, every Linear weight [in, out]; saved by paddle.save.
TO_PDPARAMS = """
import aiohttp, datasets  # noqa: E401,F401  -- before paddle (paddle 2.6.2's zlib breaks aiohttp otherwise)
import re, sys
import numpy as np
from safetensors.numpy import load_file
LINEAR = ("q_proj", "k_proj", "v_proj", "out_proj", "linear1", "linear2", "dense")
state = {}
for name, a in load_file(sys.argv[1]).items():
    pname = re.sub(r"self_attn\\.self_attn\\.", "self_attn.", name)
    if name.split(".")[-2] in LINEAR and name.endswith(".weight"):
        a = np.ascontiguousarray(a.T)
    state[pname] = a
if sys.argv[3] == "paddle":
    import paddle
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, sys.argv[2])
else:
    import pickle
    state["StructuredToParameterName@@"] = {k: k for k in state}
    with open(sys.argv[2], "wb") as f:
        pickle.dump(state, f, protocol=4)
"""

MEASURE = """
import json, sys, time
import numpy as np
import erniem_np
from erniem_np import ErnieMModel
from erniem_np import kernels  # noqa: F401  (Numba import, outside the timed region)
from erniem_np.checkpoints import open_checkpoint  # noqa: F401

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

before = status("VmRSS")
t0 = time.perf_counter()
model = ErnieMModel.from_pretrained(sys.argv[1])
t = time.perf_counter() - t0
after = status("VmRSS")
print(json.dumps({"time": t, "rss_before": before, "rss_after": after, "peak": status("VmHWM"),
                  "params": model.num_parameters()}))
"""


def build(directory: Path, formats: list[str], use_paddle: bool) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    st_dir = directory / "safetensors"
    st_dir.mkdir(exist_ok=True)
    st = st_dir / "model.safetensors"
    if not st.exists():
        print("building a base-size random checkpoint ...", flush=True)
        weights = {name: rng.standard_normal(shape, dtype=np.float32) * 0.02
                   for name, shape in base_parameter_shapes(BASE).items()}  # fmt: skip
        write_safetensors(str(st), weights, metadata={"format": "pt"})
        del weights
    BASE.save_pretrained(st_dir)
    out = {"safetensors": st_dir}
    if "bin" in formats:
        d = directory / "bin"
        d.mkdir(exist_ok=True)
        if not (d / "pytorch_model.bin").exists():
            if not HF_PY.exists():
                raise SystemExit(f"{HF_PY} not found: the .bin file is written by torch.save in that environment")
            print("writing pytorch_model.bin with torch.save ...", flush=True)
            subprocess.run([str(HF_PY), "-c", TO_BIN, str(st), str(d / "pytorch_model.bin")], check=True)
        BASE.save_pretrained(d)
        out["bin"] = d
    if "pdparams" in formats:
        d = directory / "pdparams"
        d.mkdir(exist_ok=True)
        if not (d / "model_state.pdparams").exists():
            how = "paddle" if use_paddle and PADDLE_PY.exists() else "pickle"
            py = PADDLE_PY if how == "paddle" else HF_PY if HF_PY.exists() else Path(sys.executable)
            print(f"writing model_state.pdparams with {'paddle.save' if how == 'paddle' else 'pickle'} ...",
                  flush=True)  # fmt: skip
            subprocess.run([str(py), "-c", TO_PDPARAMS, str(st), str(d / "model_state.pdparams"), how],
                           check=True, stderr=subprocess.DEVNULL if how == "paddle" else None)  # fmt: skip
        cfg = BASE.to_dict()
        cfg.pop("flavor")
        cfg["paddlenlp_version"] = None
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        out["pdparams"] = d
    return out


def weights_file(d: Path) -> Path:
    return next(p for p in d.iterdir() if p.name != "config.json")


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def measure(d: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", MEASURE, str(d)], capture_output=True, text=True, env=env,
                       check=False)
    if r.returncode:
        raise SystemExit(f"measurement failed for {d}:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", help="where to build the checkpoints (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints (only with a temporary --dir)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--formats", default="safetensors,bin,pdparams")
    p.add_argument("--no-paddle", action="store_true", help="write the .pdparams with pickle, not paddle.save")
    args = p.parse_args()
    formats = args.formats.split(",")
    tmp = None
    directory = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix="erniem-bench-"))
    try:
        dirs = build(directory, formats, not args.no_paddle)
        rows = []
        for fmt in formats:
            d = dirs[fmt]
            f = weights_file(d)
            warm(f)
            measure(d)  # one unmeasured run: page cache and Python's own caches warm
            runs = sorted((measure(d) for _ in range(args.repeat)), key=lambda r: r["time"])
            med = runs[len(runs) // 2]
            rows.append((fmt, f.name, f.stat().st_size, statistics.median(r["time"] for r in runs),
                         min(r["time"] for r in runs), max(r["time"] for r in runs), med))
        mb = 1 << 20
        print(f"\nErnieMModel.from_pretrained, {rows[0][6]['params']:,} parameters, median of {args.repeat} fresh "
              f"processes, warm page cache ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)")
        print(f"{'format':<12} {'file':<22} {'size MB':>8} {'load s':>7} {'(min-max)':>13} {'RSS before':>11} "
              f"{'RSS after':>10} {'delta':>8} {'peak':>8} {'after/file':>10}")
        for fmt, name, size, t, lo, hi, r in rows:
            print(f"{fmt:<12} {name:<22} {size / mb:8.0f} {t:7.3f} {f'({lo:.3f}-{hi:.3f})':>13} "
                  f"{r['rss_before'] / mb:9.0f}MB {r['rss_after'] / mb:8.0f}MB "
                  f"{(r['rss_after'] - r['rss_before']) / mb:6.0f}MB {r['peak'] / mb:6.0f}MB "
                  f"{r['rss_after'] / size:9.1%}")
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
