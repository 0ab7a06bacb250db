"""Would int8 attention products keep the int8 backend's accuracy targets?

Simulates, in exact integer arithmetic (integer codes, exact integer sums checked to fit int32, then float32
dequantization), int8 versions of the two attention products (scores = q k^T / sqrt(d), context = P v) as a
drop-in for ``attention.attention`` inside ``erniem_np.quantized.encoder_layer`` (monkeypatched), on the bundled
language-ID model and its held-out lines, batched as scripts/bench/int8_accuracy.py batches them (32 a batch,
padded to the longest, truncation at 128).

    .venv/bin/python scripts/bench/int8_attention_accuracy.py [--long] [--out results.json]    # about 80 s

--long also runs a stress set: held-out lines of one language concatenated until they fill 128 tokens (so the
softmax spreads over up to 128 keys), where float32 is the reference (no gold labels needed for agreement).

Per scheme it prints accuracy, top-1 agreement with float32, the largest logit difference vs float32, and per
layer the relative error of the attention context (and of the scores and probabilities) against float32
attention (``attention_ref``) fed the very same q, k, v, over the non-padded query rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import types

import numpy as np
from erniem_np.kernels.attention import attention_ref, softmax_ref
from erniem_np.kernels.qgemm import quantize_rows_ref

from erniem_np import quantized
from erniem_np.bundled import LANGID_MODEL

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_accuracy import load  # a script beside this one

F32 = np.float32
INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------------------------------ quantizers
BITS = 8  # the bit width of every code (8: uint8 0..255, int8 -127..127); lowered only by the margin sweep


def asym_u8_rows(x):
    """Asymmetric uint8 over the last axis, exactly kernels/qgemm.quantize_rows_ref: -> (codes int64, s, z)."""
    shp = x.shape
    if BITS != 8:
        q, s, z = asym_u8_tensor(x, axes=(-1,))
        return q, s[..., 0], z[..., 0]
    xq, s, z = quantize_rows_ref(np.ascontiguousarray(x, dtype=F32).reshape(-1, shp[-1]))
    return xq.reshape(shp).astype(np.int64), s.reshape(shp[:-1]), z.reshape(shp[:-1]).astype(np.int64)


def asym_u8_tensor(x, axes):
    """Asymmetric unsigned codes 0..2^BITS-1 with one (scale, zero point) per slice over ``axes``, the rule of
    quantize_rows_ref (for axes=(-1,) and BITS=8 it gives its codes exactly: checked in main)."""
    top = F32(2**BITS - 1)
    lo = np.minimum(x.min(axis=axes, keepdims=True), 0).astype(F32)
    hi = np.maximum(x.max(axis=axes, keepdims=True), 0).astype(F32)
    s = ((hi - lo) / top).astype(F32)
    s = np.where(s > 0, s, F32(1)).astype(F32)
    z = np.rint(-lo / s).astype(np.int64)
    q = np.clip(np.rint(x / s) + z, 0, top).astype(np.int64)
    return q, s, z


def sym_i8(x, axes):
    """Symmetric int8 in [-127, 127], one scale per slice over ``axes`` (quantize_weight's rule):
    s = max|x| / 127 (1 for an all-zero slice). (BITS < 8: [-(2^(BITS-1)-1), 2^(BITS-1)-1].)"""
    top = F32(2 ** (BITS - 1) - 1)
    amax = np.abs(x).max(axis=axes, keepdims=True).astype(F32)
    s = np.where(amax > 0, amax / top, F32(1)).astype(F32)
    q = np.clip(np.rint(x / s), -top, top).astype(np.int64)
    return q, s


def exact_matmul(a, b):
    """Integer a @ b (int64 codes), exact; checks every sum fits int32 as the int8 kernels' accumulators would.
    float64 BLAS is exact here (|partial sums| < 2**53); the bound check is on |a| @ |b|."""
    bound = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert bound.max(initial=0) <= INT32_MAX, "int32 accumulator would overflow"
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


# ------------------------------------------------------------------------------------------ the schemes
def scores_f32(qh, kh, d, scaling):
    if scaling == "hf":
        return (qh @ kh.transpose(0, 1, 3, 2)) / math.sqrt(d)
    return (qh * d**-0.5) @ kh.transpose(0, 1, 3, 2)


def scores_int8(qh, kh, d, scaling, granularity):
    """QK^T with q asymmetric uint8 and k symmetric int8; granularity 'row': q per (token, head) row, k per
    (key, head) row; 'tensor': one q (scale, zp) and one k scale per (batch, head)."""
    if scaling != "hf":
        qh = qh * F32(d**-0.5)
    if granularity == "row":
        qq, sq, zq = asym_u8_rows(qh)  # [B, nh, L, d], [B, nh, L]
        kq, sk = sym_i8(kh, axes=-1)  # [B, nh, Lk, d], [B, nh, Lk, 1]
        sq, zq, sk = sq[..., :, None], zq[..., :, None], sk[..., :, 0][..., None, :]
    else:
        qq, sq, zq = asym_u8_tensor(qh, axes=(-2, -1))  # [B, nh, 1, 1]
        kq, sk = sym_i8(kh, axes=(-2, -1))
        sk = sk.transpose(0, 1, 3, 2)
    acc = exact_matmul(qq, kq.transpose(0, 1, 3, 2)) - zq * kq.sum(axis=-1)[..., None, :]  # [B, nh, L, Lk]
    assert np.abs(acc).max(initial=0) <= INT32_MAX
    s = acc.astype(np.int32).astype(F32) * (sq * sk).astype(F32)  # scales multiplied first, as qlinear does
    if scaling == "hf":
        s = s / math.sqrt(d)
    return s.astype(F32)


def pv_int8(p, vh, p_scale, v_granularity="channel", renorm=False):
    """context = P v with P uint8 (zero point 0) and v symmetric int8.
    p_scale: 'row' (max of the row / 255), 'fixed' (1/255), 'tensor' (max over the (batch, head) / 255).
    v_granularity: 'channel' (per head channel over the keys of a (batch, head)), 'tensor' (per (batch, head)).
    renorm: divide by the sum of the P codes (times the P scale) instead of trusting P's rows to sum to 1."""
    top = F32(2**BITS - 1)
    if p_scale == "row":
        sp = p.max(axis=-1, keepdims=True).astype(F32) / top
    elif p_scale == "fixed":
        sp = np.full(p.shape[:-1] + (1,), F32(1) / top, F32)
    else:
        sp = p.max(axis=(-2, -1), keepdims=True).astype(F32) / top
    sp = np.where(sp > 0, sp, F32(1)).astype(F32)
    pq = np.clip(np.rint(p / sp), 0, top).astype(np.int64)
    vq, sv = sym_i8(vh, axes=(-2,) if v_granularity == "channel" else (-2, -1))  # sv [B, nh, 1, d | 1]
    acc = exact_matmul(pq, vq)  # [B, nh, L, d]
    if renorm:
        tot = pq.sum(axis=-1, keepdims=True).astype(F32)
        tot = np.where(tot > 0, tot, F32(1))
        return (acc.astype(np.int32).astype(F32) * (sv / tot).astype(F32)).astype(F32)  # sum P = 1 assumed
    return (acc.astype(np.int32).astype(F32) * (sp * sv).astype(F32)).astype(F32)


def bf16(x):
    """float32 -> the nearest bfloat16 (ties to even), returned as float32: the rounding of vcvtneps2bf16 (the
    inputs here are finite)."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(F32)


def scores_bf16(qh, kh, d, scaling):
    """QK^T with q and k rounded to bfloat16 (the products exact in float32, summed in float32 by vdpbf16ps)."""
    if scaling != "hf":
        qh = qh * F32(d**-0.5)
    s = (bf16(qh).astype(np.float64) @ bf16(kh).astype(np.float64).transpose(0, 1, 3, 2)).astype(F32)
    if scaling == "hf":
        s = s / F32(math.sqrt(d))
    return s.astype(F32)


def pv_bf16(p, vh):
    """context = P v with P and v rounded to bfloat16."""
    return (bf16(p).astype(np.float64) @ bf16(vh).astype(np.float64)).astype(F32)


SCHEMES = {
    # name: (QK granularity or None for float32, PV config or None for float32)
    "f32ref": (None, None),  # attention_ref through the wrapper: the harness's own check
    "S1 QK row": ("row", None),
    "S2 QK row + PV row": ("row", {"p_scale": "row"}),
    "S3 QK row + PV fixed 1/255": ("row", {"p_scale": "fixed"}),
    # extras
    "S1T QK tensor": ("tensor", None),
    "S2T QK tensor + PV tensor": ("tensor", {"p_scale": "tensor", "v_granularity": "tensor"}),
    "S2 + v tensor": ("row", {"p_scale": "row", "v_granularity": "tensor"}),
    "S2R row + renorm": ("row", {"p_scale": "row", "renorm": True}),
    "S3R fixed + renorm": ("row", {"p_scale": "fixed", "renorm": True}),
    "PV row only (QK f32)": (None, {"p_scale": "row"}),
    "PV fixed only (QK f32)": (None, {"p_scale": "fixed"}),
    # bfloat16 inputs, float32 sums (vdpbf16ps): no scales, no zero points
    "B1 QK bf16": ("bf16", None),
    "B2 QK bf16 + PV bf16": ("bf16", "bf16"),
    "PV bf16 only (QK f32)": (None, "bf16"),
}


class Recorder:
    """Per-layer error sums of the scheme against attention_ref on the same q, k, v (valid query rows/keys)."""

    def __init__(self, n_layers):
        self.n_layers, self.call = n_layers, 0
        keys = ("ctx_d", "ctx_r", "ctx_row_max", "s_d", "s_r", "s_max", "p_d", "p_r", "p_max")
        self.stats = {i: dict.fromkeys(keys, 0.0) for i in range(n_layers)}

    def add(self, layer, valid_q, valid_k, ctx, ctx_ref, s, s_ref, p, p_ref):
        st = self.stats[layer]
        dc, rc = (ctx - ctx_ref)[valid_q], ctx_ref[valid_q]  # [rows, H]
        st["ctx_d"] += float((dc.astype(np.float64) ** 2).sum())
        st["ctx_r"] += float((rc.astype(np.float64) ** 2).sum())
        row_rel = np.linalg.norm(dc, axis=-1) / np.maximum(np.linalg.norm(rc, axis=-1), 1e-30)
        st["ctx_row_max"] = max(st["ctx_row_max"], float(row_rel.max(initial=0)))
        vm = valid_q[:, None, :, None] & valid_k[:, None, None, :]  # [B, 1, L, Lk]
        vm = np.broadcast_to(vm, s.shape)
        ds = (s - s_ref)[vm]
        st["s_d"] += float((ds.astype(np.float64) ** 2).sum())
        st["s_r"] += float((s_ref[vm].astype(np.float64) ** 2).sum())
        st["s_max"] = max(st["s_max"], float(np.abs(ds).max(initial=0)))
        dp = (p - p_ref)[vm]
        st["p_d"] += float((dp.astype(np.float64) ** 2).sum())
        st["p_r"] += float((p_ref[vm].astype(np.float64) ** 2).sum())
        st["p_max"] = max(st["p_max"], float(np.abs(dp).max(initial=0)))

    def summary(self):
        out = {}
        for i, st in self.stats.items():
            out[i] = {"ctx_rel": math.sqrt(st["ctx_d"] / max(st["ctx_r"], 1e-300)), "ctx_row_max": st["ctx_row_max"],
                      "score_rel": math.sqrt(st["s_d"] / max(st["s_r"], 1e-300)), "score_max_abs": st["s_max"],
                      "probs_rel": math.sqrt(st["p_d"] / max(st["p_r"], 1e-300)), "probs_max_abs": st["p_max"]}  # fmt: skip
        return out


def make_attention(scheme, recorder):
    qk, pv = SCHEMES[scheme]

    def attention(q, k, v, n_heads, mask=None, head_mask=None, scaling="hf", need_probs=False, products=None):
        B, L, H = q.shape
        Lk = k.shape[1]
        d = H // n_heads
        q, k, v = (np.asarray(a, dtype=F32) for a in (q, k, v))
        qh = q.reshape(B, L, n_heads, d).transpose(0, 2, 1, 3)
        kh = k.reshape(B, Lk, n_heads, d).transpose(0, 2, 1, 3)
        vh = v.reshape(B, Lk, n_heads, d).transpose(0, 2, 1, 3)
        s_ref = scores_f32(qh, kh, d, scaling)
        p_ref = softmax_ref(s_ref, mask, head_mask, n_heads)
        ctx_ref = (p_ref @ vh).transpose(0, 2, 1, 3).reshape(B, L, H)
        s = s_ref if qk is None else scores_bf16(qh, kh, d, scaling) if qk == "bf16" else \
            scores_int8(qh, kh, d, scaling, qk)  # fmt: skip
        p = p_ref if qk is None else softmax_ref(s, mask, head_mask, n_heads)
        ctx = p @ vh if pv is None else pv_bf16(p, vh) if pv == "bf16" else pv_int8(p, vh, **pv)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, L, H).astype(F32)
        if scheme == "f32ref":  # the wrapper reproduces attention_ref bit for bit
            c2, _ = attention_ref(q, k, v, n_heads, mask, head_mask, scaling)
            assert np.array_equal(c2, ctx)
        if recorder is not None and mask is not None and L == Lk:  # self-attention, no cache (this benchmark)
            m = np.broadcast_to(np.asarray(mask), (B, 1, 1, Lk))[:, 0, 0, :]
            valid = m == 0
            recorder.add(recorder.call % recorder.n_layers, valid, valid, ctx, ctx_ref, s, s_ref, p, p_ref)
        elif recorder is not None:
            valid = np.ones((B, Lk), bool)
            recorder.add(recorder.call % recorder.n_layers, valid, valid, ctx, ctx_ref, s, s_ref, p, p_ref)
        if recorder is not None:
            recorder.call += 1
        return ctx, (p if need_probs else None)

    return types.SimpleNamespace(attention=attention, bf16_supported=lambda: False)


# ------------------------------------------------------------------------------------------ data and runs
def run_model(model, tokenizer, texts, batch=32, probes=False):
    """Logits as scripts/bench/int8_accuracy.py computes them (batches of 32, padded, max_length 128), and with
    ``probes`` each layer's attention context on the non-padded tokens ([tokens, H] per layer)."""
    n_layers = model.config.num_hidden_layers
    out, ctx = [], [[] for _ in range(n_layers)]
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], padding=True, truncation=True, max_length=128, return_tensors="np")
        pr = {} if probes else None
        out.append(model(enc["input_ids"], attention_mask=enc["attention_mask"], probes=pr).logits)
        if probes:
            valid = enc["attention_mask"].astype(bool)
            for j in range(n_layers):
                ctx[j].append(np.asarray(pr[f"layer.{j:02d}.attn.context"])[valid])
    return np.concatenate(out), ([np.concatenate(c) for c in ctx] if probes else None)


def long_texts(tokenizer, texts, gold, target=128):
    """Lines of one language joined (in file order) until adding the next would pass ``target`` tokens; each
    group starts at a new line, so every line is used once. Returns (texts, gold, token lengths)."""
    def ntok(t):
        return len(tokenizer([t], truncation=False, return_tensors="np")["input_ids"][0])

    out, lab = [], []
    for lang in dict.fromkeys(gold):
        cur = []
        for t in [t for t, g in zip(texts, gold) if g == lang]:
            if cur and ntok(" ".join(cur + [t])) > target:
                out.append(" ".join(cur)), lab.append(lang)
                cur = [t]
            else:
                cur.append(t)
        if cur:
            out.append(" ".join(cur)), lab.append(lang)
    return out, np.array(lab), np.array([min(target, ntok(t)) for t in out])


def decision_stats(l, l32, gold, names, texts):
    p32i = l32.argmax(1)
    p32 = np.array([names[i] for i in p32i])
    p = np.array([names[i] for i in l.argmax(1)])
    # margin of float32's choice under this model: l[c32] - max other (negative = flipped)
    other = l.copy()
    other[np.arange(len(l)), p32i] = -np.inf
    margin = l[np.arange(len(l)), p32i] - other.max(1)
    srt = np.sort(l32, axis=1)
    gap32 = srt[:, -1] - srt[:, -2]
    tie = int(gap32.argmin())
    return {"acc": float((p == gold).mean()), "agree": float((p == p32).mean()), "flips": int((p != p32).sum()),
            "max_logit_diff": float(np.abs(l - l32).max()), "mean_logit_diff": float(np.abs(l - l32).mean()),
            "min_margin": float(margin.min()), "closest_case_margin": float(margin[tie]),
            "closest_case_f32_gap": float(gap32[tie]),
            "flipped": [(texts[i][:60], p32[i], p[i], gold[i], float(gap32[i])) for i in np.flatnonzero(p != p32)]}  # fmt: skip


def ctx_rel(ctx, ctx32):
    return [float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(ctx, ctx32)]


def evaluate(name, texts, gold, fp32, int8, tokenizer, schemes, sweep):
    global BITS
    names = fp32.config.id2label
    n_layers = fp32.config.num_hidden_layers
    t0 = time.time()
    l32, ctx32 = run_model(fp32, tokenizer, texts, probes=True)
    res = {"set": name, "n": len(texts), "f32_acc": float((np.array([names[i] for i in l32.argmax(1)]) == gold).mean()),
           "max_abs_logit": float(np.abs(l32).max()), "rows": {}, "sweep": {}}  # fmt: skip
    l8, ctx8 = run_model(int8, tokenizer, texts, probes=True)  # the int8 backend as it runs here
    r = decision_stats(l8, l32, gold, names, texts)
    r["e2e_ctx_rel"] = ctx_rel(ctx8, ctx32)
    res["rows"][f"int8 backend ({quantized.attention_products()} attention kernel)"] = r
    orig = quantized.attention
    try:
        for sc in schemes:
            rec = Recorder(n_layers)
            quantized.attention = make_attention(sc, rec)
            l, ctx = run_model(int8, tokenizer, texts, probes=True)
            r = decision_stats(l, l32, gold, names, texts)
            r["e2e_ctx_rel"] = ctx_rel(ctx, ctx32)
            r["layers"] = rec.summary()
            res["rows"][sc] = r
        for sc in sweep:
            for bits in (7, 6, 5, 4, 3):
                BITS = bits
                quantized.attention = make_attention(sc, None)
                l, _ = run_model(int8, tokenizer, texts)
                res["sweep"][f"{sc} @ {bits} bits"] = decision_stats(l, l32, gold, names, texts)
    finally:
        quantized.attention = orig
        BITS = 8
    srt = np.sort(l32, axis=1)
    gap = srt[:, -1] - srt[:, -2]
    res["f32_top2_gap"] = {"min": float(gap.min()), "p1": float(np.percentile(gap, 1)), "median": float(np.median(gap))}
    res["seconds"] = time.time() - t0
    return res


def print_result(res):
    print(f"\n== {res['set']}: {res['n']} inputs; float32 accuracy {100 * res['f32_acc']:.2f}%, "
          f"|logits| up to {res['max_abs_logit']:.1f}; float32 top1-top2 gap min {res['f32_top2_gap']['min']:.3f}, "
          f"1st pct {res['f32_top2_gap']['p1']:.3f}, median {res['f32_top2_gap']['median']:.2f}")  # fmt: skip
    print("| model | accuracy | Δacc (pts) | top-1 agreement | max |Δlogit| | mean |Δlogit| | min margin of f32 top-1 "
          "| closest case margin (f32 gap) | e2e ctx rel err per layer (vs float32 model) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for k, r in list(res["rows"].items()) + list(res["sweep"].items()):
        e2e = " / ".join(f"{x:.1e}" for x in r.get("e2e_ctx_rel", []))
        print(f"| {k} | {100 * r['acc']:.2f}% | {100 * (r['acc'] - res['f32_acc']):+.2f} | {100 * r['agree']:.2f}% "
              f"({r['flips']}) | {r['max_logit_diff']:.4f} | {r['mean_logit_diff']:.4f} | {r['min_margin']:.3f} | "
              f"{r['closest_case_margin']:.3f} ({r['closest_case_f32_gap']:.3f}) | {e2e} |")  # fmt: skip
    print("\nper layer, scheme vs float32 attention on the same q, k, v (valid rows):")
    print("| scheme | layer | ctx rel err | worst row rel err | score rel err | score max abs err | probs max abs err |")
    print("|---|---|---|---|---|---|---|")
    for k, r in res["rows"].items():
        for i, st in r.get("layers", {}).items():
            print(f"| {k} | {i} | {st['ctx_rel']:.2e} | {st['ctx_row_max']:.2e} | {st['score_rel']:.2e} | "
                  f"{st['score_max_abs']:.2e} | {st['probs_max_abs']:.2e} |")  # fmt: skip
    for k, r in list(res["rows"].items()) + list(res["sweep"].items()):
        for f in r["flipped"][:6]:
            print(f"  flip [{k}]: {f[0]!r} f32 {f[1]} -> {f[2]} (gold {f[3]}, f32 gap {f[4]:.3f})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=LANGID_MODEL)
    ap.add_argument("--long", action="store_true", help="also the 128-token concatenated stress set")
    ap.add_argument("--schemes", nargs="*", default=list(SCHEMES))
    ap.add_argument("--sweep", nargs="*", default=["S1 QK row", "S2 QK row + PV row", "S3 QK row + PV fixed 1/255"],
                    help="schemes to rerun at 7..3 bits (margin: how many bits before the targets break)")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(F32) * 3 + 0.5  # the 8-bit quantizer twin
    a, b = quantize_rows_ref(x), asym_u8_tensor(x, axes=(-1,))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1][:, 0]) and np.array_equal(a[2], b[2][:, 0])
    texts, gold, tokenizer, fp32, int8 = load(args.model)
    c = fp32.config
    print(f"model {args.model}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads "
          f"(d = {c.hidden_size // c.num_attention_heads}), FFN {c.intermediate_size}, vocab {c.vocab_size}")  # fmt: skip
    lens = np.array([len(tokenizer([t], truncation=True, max_length=128, return_tensors="np")["input_ids"][0])
                     for t in texts])  # fmt: skip
    print(f"held-out token lengths: min {lens.min()}, median {np.median(lens):.0f}, max {lens.max()}")
    results = [evaluate("held-out lines", texts, gold, fp32, int8, tokenizer, args.schemes, args.sweep)]
    print_result(results[-1])
    if args.long:
        lt, lg, ll = long_texts(tokenizer, texts, gold)
        print(f"\nstress set: {len(lt)} texts, token lengths min {ll.min()}, median {np.median(ll):.0f}, max {ll.max()}")
        results.append(evaluate("concatenated lines (~128 tokens)", lt, lg, fp32, int8, tokenizer, args.schemes,
                                args.sweep))  # fmt: skip
        print_result(results[-1])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=str)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
