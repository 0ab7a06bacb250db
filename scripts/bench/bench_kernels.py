"""The Numba GEMM against NumPy/OpenBLAS sgemm on ErnieM shapes, in one run, same threads; then attention.

    .venv/bin/python scripts/bench/bench_kernels.py [--threads 2] [--reps 15] [--only gemm|qkv|model-gemms|attention]

For each shape (M rows, K in, N out) it times y = x W^T + b both ways (best of --reps, so a busy machine's
noise shows as less, not more) and prints GFLOP/s and the kernel's fraction of OpenBLAS. The Numba kernel is
timed first and the script sleeps after each BLAS call: OpenBLAS's threads spin-wait for a while after a call
and, timed right after one, the kernel loses a core to them (that cost up to 2x in earlier measurements).

q, k and v (--only qkv): three ``linear`` calls against one ``linear_many`` call on [M, 768] inputs, M in 128,
512, 1024, alternating call by call, medians of 2 x --reps calls each.

The model's GEMMs (--only model-gemms): the 48 GEMM calls of one ErnieM-base forward, with the model's own
layout of work (12 layers with distinct random weights, 340 MB, packed at load as the model packs them
(``gemm.PackedWeight``), so the weights stream from memory as in the model: q/k/v in one ``linear_many``, out_proj + residual, linear1 + GELU, linear2 + residual) at M = 128
(B=1 L=128) and 1024 (B=8 L=128) rows, against the same products in OpenBLAS (np.matmul into preallocated
outputs, bias and residual added in place; no GELU, which favours OpenBLAS), interleaved pass by pass with a
pause after each, medians of --reps passes.

The crossover (--only crossover): each kernel's serial twin against its parallel kernel on small work, the
pool kept awake as in a forward pass (medians of 400 back-to-back calls), with the work estimate ``run``
compares with ``settings.SERIAL_BELOW_FLOPS``: where the parallel kernel starts to win is where that
threshold belongs.

Attention (ErnieM-base heads: H = 768, nh = 12, d = 64; float32-min mask on 20% of the keys; need_probs False)
at B=1 L=512 and B=8 L=128, both scalings: the Numba kernel, its NumPy twin ``attention_ref`` and a per-head
np.matmul formulation (q_h k_h^T / 8 + mask, NumPy softmax, p v_h), interleaved round by round (a 0.5 s pause
after each round's BLAS call), best of --reps calls each.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--only", choices=("gemm", "qkv", "model-gemms", "attention", "crossover"),
                    help="time one part only (crossover runs only when asked for)")
    args = ap.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import numpy as np
    from erniem_np.kernels import attention, gemm

    def best(f):
        f()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    rng = np.random.default_rng(0)
    if args.only in (None, "gemm"):
        bench_gemm(np, gemm, rng, best)
    if args.only in (None, "qkv"):
        bench_qkv(np, gemm, rng, args.reps)
    if args.only in (None, "model-gemms"):
        bench_model_gemms(np, gemm, rng, args.reps)
    if args.only in (None, "attention"):
        bench_attention(np, attention, rng, args.reps)
    if args.only == "crossover":
        bench_crossover(np, rng)


def bench_gemm(np, gemm, rng, best):
    print(f"{'M':>5} {'K':>5} {'N':>5}  {'OpenBLAS GF/s':>13}  {'Numba GF/s':>10}  fraction")
    for M in (128, 1024, 4096):
        for K, N in ((768, 768), (768, 3072), (3072, 768), (1024, 4096), (4096, 1024)):
            x = rng.standard_normal((M, K), dtype=np.float32)
            w = rng.standard_normal((N, K), dtype=np.float32)
            b = rng.standard_normal(N, dtype=np.float32)
            flop = 2 * M * K * N
            t_numba = best(lambda: gemm.linear(x, w, b))  # noqa: B023
            t_blas = best(lambda: x @ w.T + b)  # noqa: B023
            time.sleep(0.5)  # OpenBLAS threads spin after a call and would take the cores from the next kernel
            print(f"{M:>5} {K:>5} {N:>5}  {flop / t_blas / 1e9:>13.0f}  {flop / t_numba / 1e9:>10.0f}  "
                  f"{t_blas / t_numba:>7.0%}")  # fmt: skip


def bench_qkv(np, gemm, rng, reps):
    """q, k and v: three ``linear`` calls against one ``linear_many`` call, alternating call by call."""
    print(f"\n{'M':>5}  {'3 calls GF/s':>12}  {'linear_many GF/s':>16}  speed-up (medians)")
    for M in (128, 512, 1024):
        x = rng.standard_normal((M, 768), dtype=np.float32)
        params = [(rng.standard_normal((768, 768), dtype=np.float32), np.zeros(768, np.float32)) for _ in range(3)]
        calls = {"sep": lambda: [gemm.linear(x, w, b) for w, b in params],  # noqa: B023
                 "one": lambda: gemm.linear_many(x, params)}  # noqa: B023  # fmt: skip
        times = {n: [] for n in calls}
        for f in calls.values():
            f()
        for r in range(2 * reps):
            for n in ("sep", "one") if r % 2 else ("one", "sep"):
                t = time.perf_counter()
                calls[n]()
                times[n].append(time.perf_counter() - t)
        flop = 3 * 2 * M * 768 * 768
        sep, one = (float(np.median(times[n])) for n in ("sep", "one"))
        print(f"{M:>5}  {flop / sep / 1e9:>12.0f}  {flop / one / 1e9:>16.0f}  {sep / one:>8.3f}")


def bench_model_gemms(np, gemm, rng, reps, H=768, F=3072, n_layers=12):
    """One forward's GEMMs, erniem-np (with its fused epilogues) against OpenBLAS, pass by pass."""

    def linear_params(n_out, n_in):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) / np.float32(np.sqrt(n_in))  # float32 weights
        return w, np.zeros(n_out, np.float32)

    layers = [{"qkv": [linear_params(H, H) for _ in range(3)], "out": linear_params(H, H),
               "ffn1": linear_params(F, H), "ffn2": linear_params(H, F)} for _ in range(n_layers)]  # fmt: skip
    packed = [{k: [(gemm.PackedWeight(w), b) for w, b in v] if k == "qkv" else (gemm.PackedWeight(v[0]), v[1])
               for k, v in lay.items()} for lay in layers]  # as the model loads them  # fmt: skip
    print(f"\n{'M':>5}  {'OpenBLAS GF/s':>13}  {'erniem-np GF/s':>14}  ratio (medians of {reps} passes; 48 GEMMs each)")
    for M in (128, 1024):
        x, h = rng.standard_normal((M, H), dtype=np.float32), rng.standard_normal((M, F), dtype=np.float32)

        def ours(x=x, h=h):
            for lay in packed:
                gemm.linear_many(x, lay["qkv"])
                gemm.linear(x, *lay["out"], residual=x)
                gemm.linear(x, *lay["ffn1"], activation="gelu")
                gemm.linear(h, *lay["ffn2"], residual=x)

        out_h, out_f = np.empty((M, H), np.float32), np.empty((M, F), np.float32)

        def blas(x=x, h=h, out_h=out_h, out_f=out_f):  # into preallocated outputs, epilogues in place
            for lay in layers:
                for w, b in lay["qkv"]:
                    np.add(np.matmul(x, w.T, out=out_h), b, out=out_h)
                np.add(np.add(np.matmul(x, lay["out"][0].T, out=out_h), lay["out"][1], out=out_h), x, out=out_h)
                np.add(np.matmul(x, lay["ffn1"][0].T, out=out_f), lay["ffn1"][1], out=out_f)
                np.add(np.add(np.matmul(h, lay["ffn2"][0].T, out=out_h), lay["ffn2"][1], out=out_h), x, out=out_h)

        times = {"ours": [], "blas": []}
        ours(), blas()
        for r in range(reps):
            for name, f in (("ours", ours), ("blas", blas)) if r % 2 else (("blas", blas), ("ours", ours)):
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
                time.sleep(0.3)
        flop = 2 * M * n_layers * (4 * H * H + 2 * H * F)
        t_ours, t_blas = (float(np.median(times[n])) for n in ("ours", "blas"))
        print(f"{M:>5}  {flop / t_blas / 1e9:>13.0f}  {flop / t_ours / 1e9:>14.0f}  {t_blas / t_ours:>6.2f}x")


def bench_attention(np, attention, rng, reps):
    H, nh = 768, 12
    d = H // nh

    def per_head(q, k, v, mask):
        ctx = np.empty_like(q)
        for b in range(q.shape[0]):
            for h in range(nh):
                cols = slice(h * d, (h + 1) * d)
                s = q[b, :, cols] @ k[b, :, cols].T / np.float32(np.sqrt(d)) + mask[b, 0]
                s = np.exp(s - s.max(-1, keepdims=True))
                ctx[b, :, cols] = (s / s.sum(-1, keepdims=True)) @ v[b, :, cols]
        return ctx

    print(f"\n{'B':>2} {'L':>4} {'scaling':>7}  {'Numba ms':>8}  {'twin ms':>8}  {'per-head matmul ms':>18}")
    for B, L in ((1, 512), (8, 128)):
        q, k, v = (rng.standard_normal((B, L, H), dtype=np.float32) for _ in range(3))
        mask = np.where(rng.random((B, 1, 1, L)) < 0.2, np.finfo(np.float32).min, 0).astype(np.float32)
        for scaling in ("hf", "paddle"):
            fns = (lambda: attention.attention(q, k, v, nh, mask, None, scaling),  # noqa: B023
                   lambda: attention.attention_ref(q, k, v, nh, mask, None, scaling),  # noqa: B023
                   lambda: per_head(q, k, v, mask))  # noqa: B023  # fmt: skip
            best = [float("inf")] * 3
            for f in fns:
                f()
            for _ in range(reps):
                for n, f in enumerate(fns):
                    t = time.perf_counter()
                    f()
                    best[n] = min(best[n], time.perf_counter() - t)
                time.sleep(0.5)
            matmul = f"{best[2] * 1e3:>18.2f}" if scaling == "hf" else f"{'(hf only)':>18}"
            print(f"{B:>2} {L:>4} {scaling:>7}  {best[0] * 1e3:>8.2f}  {best[1] * 1e3:>8.2f}  {matmul}")


def bench_crossover(np, rng):
    """Serial twin against parallel kernel on small work, each with its work estimate (as ``run`` computes it)."""
    from erniem_np.kernels import attention, gemm, norm, qgemm

    def median_us(f, n=400):
        f()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1e6

    def both(call):  # call(kernel_name_suffix) with the serial twin, then with the parallel kernel
        return median_us(lambda: call(True)), median_us(lambda: call(False))

    print(f"\n{'kernel':<42} {'work estimate':>13}  {'serial us':>9}  {'parallel us':>11}")

    def show(what, flops, serial_us, parallel_us):
        print(f"{what:<42} {flops:>13,}  {serial_us:>9.1f}  {parallel_us:>11.1f}")

    for M, K, N in ((1, 768, 3), (1, 768, 768), (4, 768, 768), (1, 768, 3072)):
        x = rng.standard_normal((M, K), dtype=np.float32)
        w = rng.standard_normal((N, K), dtype=np.float32)
        b = np.zeros(N, np.float32)
        pw = qgemm.PackedInt8.quantize(w)
        flops = 2 * M * K * N
        calls = (("float32", lambda x=x, w=w, b=b: gemm.linear(x, w, b)),
                 ("int8", lambda x=x, pw=pw, b=b: qgemm.qlinear(x, pw, b)))  # fmt: skip
        for label, f in calls:
            show(f"{label} GEMM M{M} K{K} N{N}", flops, *both(lambda serial, f=f: _forced(serial, f)))
    g, z = np.ones(768, np.float32), np.zeros(768, np.float32)
    for M in (8, 16, 32, 128):
        x = rng.standard_normal((M, 768), dtype=np.float32)
        f = lambda x=x: norm.layer_norm(x, g, z, 1e-5)
        show(f"LayerNorm {M} x 768", 20 * M * 768, *both(lambda serial, f=f: _forced(serial, f)))
    products = ("float32", "bf16") if attention.bf16_supported() else ("float32",)
    for L, H, nh in ((1, 768, 12), (2, 768, 12), (4, 768, 12), (8, 768, 12), (16, 768, 12), (32, 768, 12),
                     (16, 64, 2), (16, 256, 4)):  # fmt: skip
        q = rng.standard_normal((1, L, H), dtype=np.float32)
        for p in products:
            show(f"attention {p} B1 L{L} H{H} {nh} heads", attention.work_estimate(1, L, L, H, nh),
                 *both(lambda serial, q=q, nh=nh, p=p: _forced(serial, lambda: attention.attention(
                     q, q, q, nh, None, None, scaling="hf", need_probs=False, products=p))))  # fmt: skip


def _forced(serial, f):
    """f() with every kernel wrapper forced to its serial twin (serial=True) or its parallel kernel."""
    from erniem_np.kernels import settings

    saved = settings.SERIAL_BELOW_FLOPS
    settings.SERIAL_BELOW_FLOPS = 2**62 if serial else 0
    try:
        return f()
    finally:
        settings.SERIAL_BELOW_FLOPS = saved


if __name__ == "__main__":
    main()
