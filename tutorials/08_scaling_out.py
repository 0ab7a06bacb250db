# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. Scaling out: encoding a corpus on a Dask cluster
#
# The code this chapter explains: `erniem_np/pipelines/encode.py` (`Encoder`: chunks, length buckets,
# pooling) and `erniem_np/pipelines/distributed.py` (`DaskEncoder`, `worker_encoder`, `encode_chunk_task`).
#
# Turning a corpus into embeddings is embarrassingly parallel: every text is encoded on its own. One machine
# runs the kernels on all its cores already; past that, the work has to go to other machines. Dask's
# `distributed` scheduler does the bookkeeping (which worker is free, what failed, where results are), and
# erniem-np only has to say what one task is: *encode this chunk of texts*.
#
# We use the bundled language-identification model (`erniem_np/data/langid`, chapter 5) as the encoder and a
# local cluster of worker processes on this machine; a real cluster differs only in its address.

# %%
import gzip
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
from dask.distributed import Client, LocalCluster, get_task_stream

from erniem_np import Encoder
from erniem_np.pipelines.distributed import DaskEncoder

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
MODEL = ROOT / "erniem_np" / "data" / "langid"

with gzip.open(ROOT / "tests" / "fixtures" / "tokenizer" / "corpus.txt.gz", "rt", encoding="utf-8") as f:
    lines = [line.rstrip("\n").partition("\t")[2] for line in f]
texts = [t for t in lines[::20] if t.strip()][:600]  # every 20th line: a mix of the corpus's languages
print(f"{len(texts)} texts, e.g. {texts[:3]}")

# %% [markdown]
# ## One process
#
# `Encoder` reads the input `chunk_size` texts at a time. Within a chunk it sorts the texts by token length
# and runs batches of `batch_size` similar-length texts, each padded only to its own longest (padding is
# wasted work), with the attention mask so padding never changes a result; then it puts the results back in
# input order. `pooling="mean"` averages each text's last hidden states over its tokens.

# %%
options = dict(pooling="mean", chunk_size=100, batch_size=16)
single = Encoder(str(MODEL), **options).encode(texts)
print(single.shape, single.dtype)  # [N, H]

# %% [markdown]
# ## A cluster
#
# `DaskEncoder` cuts the input into the same chunks and submits each as one task, `encode_chunk_task(path,
# options, texts)`. On a worker, `worker_encoder` loads the model once per process and keeps it, so only
# texts and embeddings travel (here the two workers share one process, so they share one loaded model). At
# most `max_in_flight` chunks are out at once, and results are taken in input
# order, so the client's memory stays flat however long the input is.
#
# A `LocalCluster` starts a scheduler and workers on this machine. Here: two single-threaded workers that live
# in this process as threads (`processes=False`), so the chapter also runs as a plain script (worker
# *processes* would re-import a script's main module; in a notebook, or with `DaskEncoder`'s own local
# cluster behind `erniem-np encode --dask`, they are processes). The scheduler hands out the chunk tasks the
# same way either way.

# %%
with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
    with Client(cluster) as client:
        with get_task_stream(client) as task_stream:
            with DaskEncoder(str(MODEL), client=client, **options) as encoder:
                distributed = encoder.encode(texts)
        tasks = [t for t in task_stream.data if "encode_chunk" in str(t["key"])]
print(distributed.shape, f"{len(tasks)} chunk tasks")

# %% [markdown]
# The chunks are the ones a single process makes, and every forward pass sees the same batch, so the result
# is not merely close: it is the same bits.

# %%
assert np.array_equal(single, distributed)
print("Dask result == single-process result, bit for bit")

# %% [markdown]
# Who did what: the task stream records, for every task, the worker and when it computed. Before drawing it
# we check that it holds what the picture claims: one task per chunk of 100 texts, each run once.

# %%
n_chunks = -(-len(texts) // options["chunk_size"])
assert len(tasks) == n_chunks, (len(tasks), n_chunks)
assert len({str(t["key"]) for t in tasks}) == n_chunks
workers = sorted({t["worker"] for t in tasks})
t0 = min(s["start"] for t in tasks for s in t["startstops"] if s["action"] == "compute")

fig, ax = plt.subplots(figsize=(8, 2.5))
for t in tasks:
    for s in t["startstops"]:
        if s["action"] == "compute":
            row = workers.index(t["worker"])
            ax.barh(row, s["stop"] - s["start"], left=s["start"] - t0, color=f"C{row}", edgecolor="black")
ax.set_yticks(range(len(workers)), [f"worker {i}" for i in range(len(workers))])
ax.set_xlabel("seconds (the first task includes loading the model on that worker)")
ax.set_title(f"{n_chunks} chunks of {options['chunk_size']} texts on {len(workers)} workers")
fig.tight_layout()
fig.savefig(FIGURES / "08_task_stream.png", dpi=100)

# %% [markdown]
# ## On a real cluster
#
# Start a scheduler on one machine and workers on the others (each with erniem-np installed and the
# checkpoint readable at the same path, e.g. on a shared file system), then point the command at the
# scheduler:
#
#     dask scheduler                                                  # on the scheduler host (port 8786)
#     dask worker tcp://scheduler-host:8786 --nworkers 1 --nthreads 1 # on each worker machine
#     erniem-np encode /shared/ckpt --input corpus.txt -o emb.npy --pooling mean --dask tcp://scheduler-host:8786
#
# One single-threaded worker process per core is usually right: the kernels of one process would otherwise
# compete with the other processes' for the same cores. `--dask` without an address starts a local cluster
# shaped that way.
