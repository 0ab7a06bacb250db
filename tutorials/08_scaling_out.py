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
# pooling), `erniem_np/pipelines/chunks.py` (`pipeline_for`, `run_chunk`: one chunk, in any process) and
# `erniem_np/pipelines/distributed.py` (`DaskRunner`, `DaskEncoder`, `run_chunk_task`).
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
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np
from dask.distributed import Client, LocalCluster, get_task_stream

from erniem_np import Encoder
from erniem_np.pipelines.base import bucket_batches, iter_chunks
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
# input order. A batch $b$ costs $|b| \cdot \max_{i \in b} L_i$ token positions for $\sum_{i \in b} L_i$ real
# tokens ($L_i$ the length of text $i$ with `[CLS]` and `[SEP]`), so texts of similar length belong together
# (exercise 2).
#
# `pooling="mean"` averages each text's last hidden states $h_{i,j}$ over its tokens, `[CLS]` and `[SEP]`
# included, padding excluded (the mask $m_{i,j}$ is 1 on real tokens):
#
# $$e_i = \frac{\sum_{j} m_{i,j}\, h_{i,j}}{\sum_{j} m_{i,j}} \in \mathbb{R}^{H}$$
#
# (`Encoder._embed_batch`; with `normalize=True` each row is then divided by
# $\max(\lVert e_i \rVert_2, 10^{-12})$.)

# %%
options = {"pooling": "mean", "chunk_size": 100, "batch_size": 16}
single = Encoder(str(MODEL), **options).encode(texts)
print(single.shape, single.dtype)  # [N, H]

# %% [markdown]
# ## A cluster
#
# `DaskEncoder` cuts the input into the same chunks and submits each as one task, `run_chunk_task(spec,
# chunk)` (its key starts with `encode_chunk`); `spec` names the task, the checkpoint path and the options. On
# a worker, `pipeline_for(spec)` loads the model once per process and keeps it, so only
# texts and embeddings travel (here the two workers share one process, so they share one loaded model). $N$
# texts make $\lceil N / c \rceil$ tasks for a chunk size $c$. At most `max_in_flight` chunks are out at once
# (by default twice the cluster's worker threads), and results are taken in input order, so the client's
# memory stays flat however long the input is.
#
# A `LocalCluster` starts a scheduler and workers on this machine. Here: two single-threaded workers that live
# in this process as threads (`processes=False`), so the chapter also runs as a plain script (worker
# *processes* would re-import a script's main module; in a notebook, or with `DaskEncoder`'s own local
# cluster behind `erniem-np encode --dask`, they are processes). The scheduler hands out the chunk tasks the
# same way either way.

# %%
with (
    LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
    Client(cluster) as client,
    get_task_stream(client) as task_stream,  # records every task the scheduler runs while open
    DaskEncoder(str(MODEL), client=client, **options) as encoder,
):
    distributed = encoder.encode(texts)
    in_flight = encoder.max_in_flight
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

# %% [markdown]
# ## Exercises
#
# 1. **Mean pooling by hand.** Encode the first chunk of texts with `pooling="last"` (every token's last hidden
#    state) and average them yourself: do you get the `pooling="mean"` rows?
# 2. **What bucketing saves.** Count the token positions the forward passes compute (padding included) for
#    these texts with `batch_size` 16: batches cut in input order, batches cut after sorting each chunk of 100
#    by length (what `Encoder` does), and after sorting all 600 at once (`chunk_size=600`). How do they compare
#    with the real tokens?
# 3. **Flow control.** How many chunks could be out at once on the cluster above, and how many tasks would
#    `chunk_size=64` make of these texts?

# %% [markdown]
# ### Answers
#
# (Spoilers: the next cell is collapsed in Jupyter; it asserts them.)

# %% jupyter={"source_hidden": true} tags=["answers"]
# 1. The same chunk gives the same batches, so the same hidden states; their mean is the "mean" row.
first_chunk = texts[: options["chunk_size"]]
last = Encoder(str(MODEL), **{**options, "pooling": "last"}).encode(first_chunk)  # a list of [L_i, H]
by_hand = np.stack([h.mean(axis=0) for h in last])  # e_i = sum_j m_ij h_ij / sum_j m_ij
gap = np.abs(by_hand - single[: len(first_chunk)]).max()
print(f"1. the mean of the last hidden states, by hand, against pooling='mean': max |difference| {gap:.1e}")
assert np.allclose(by_hand, single[: len(first_chunk)], atol=1e-6)

# 2. What the batches cost.
lengths = np.array([len(r) for r in Encoder(str(MODEL), **options).tokenize(texts)])  # L_i, [CLS] and [SEP] included


def positions(chunk_size, sort):
    """Token positions the forward passes compute: |batch| x its longest text, summed over the batches."""
    total = 0
    for start in range(0, len(lengths), chunk_size):
        chunk = lengths[start : start + chunk_size]
        if sort:
            batches = bucket_batches(chunk, 16)  # what Encoder does: sort the chunk by length, cut where work is least
        else:
            batches = [np.arange(i, min(i + 16, len(chunk))) for i in range(0, len(chunk), 16)]
        total += sum(len(b) * int(chunk[b].max()) for b in batches)
    return total


real_tokens = int(lengths.sum())
in_order, bucketed, one_chunk = positions(100, sort=False), positions(100, sort=True), positions(600, sort=True)
print(f"2. {real_tokens:,} real tokens; positions computed: {in_order:,} in input order, {bucketed:,} bucketed in "
      f"chunks of 100, {one_chunk:,} in one chunk of 600")  # fmt: skip
assert real_tokens <= one_chunk <= bucketed < in_order

# 3. max_in_flight defaults to 2 per worker thread: 2 workers x 1 thread -> 4 chunks out at once; 600 texts in
#    chunks of 64 -> ceil(600 / 64) = 10 tasks.
print(f"3. at most {in_flight} chunks in flight; chunk_size=64 makes {len(list(iter_chunks(texts, 64)))} tasks")
assert in_flight == 2 * 2 and len(list(iter_chunks(texts, 64))) == math.ceil(len(texts) / 64) == 10
