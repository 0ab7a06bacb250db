"""Compare a candidate bundle with a reference bundle, probe by probe, and name the first diverging one.

Both sides are upcast to float64 and restricted to valid tokens (``input.attention_mask`` of the reference
== 1; for attention tensors the valid query rows, every key). A probe passes when its shape matches, its
non-finite values agree (NaN where NaN, +-Inf with the same sign) and every element satisfies
``|cand - ref| <= atol + rtol * |ref|`` with the (atol, rtol) of the probe's kind in the profile, plus the
profile's secondary gates (NMSE, 1 - cosine, argmax agreement of logits) where it sets them.

Exit codes of ``erniem-np parity compare``: 0 pass, 1 numeric mismatch, 2 structural mismatch, 3 unreadable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from . import schema
from .bundle import Bundle, BundleError, as_bundle, validate

EXIT_PASS, EXIT_NUMERIC, EXIT_STRUCTURAL, EXIT_UNREADABLE = 0, 1, 2, 3
CALIBRATION_FACTOR = 10.0  # calibrated atol = max(profile atol, 10 x the reference's own float32 error)
REL_FLOOR = 1e-6  # max_rel divides by max(|ref|, atol, REL_FLOOR): relative error near zero means nothing


@dataclass
class ProbeResult:
    case: str
    probe: str
    kind: str
    tier: str
    status: str  # "ok", "FAIL", "missing" (debug probe not provided), "structural"
    atol: float = 0.0
    rtol: float = 0.0
    stats: dict = field(default_factory=dict)
    message: str = ""

    @property
    def gated(self) -> bool:
        return self.status in ("ok", "FAIL", "structural")


@dataclass
class Report:
    reference: str
    candidate: str
    profile: str
    mode: str
    rows: list[ProbeResult]
    first_divergence: ProbeResult | None
    last_passing: str | None
    hints: list[str]
    structural: list[str]
    producers: dict

    @property
    def passed(self) -> bool:
        return not self.structural and all(r.status != "FAIL" for r in self.rows)

    @property
    def exit_code(self) -> int:
        if self.structural:
            return EXIT_STRUCTURAL
        return EXIT_PASS if self.passed else EXIT_NUMERIC

    def failed(self) -> list[ProbeResult]:
        return [r for r in self.rows if r.status == "FAIL"]

    # ----------------------------------------------------------------- rendering
    def to_dict(self) -> dict:
        return {
            "reference": self.reference, "candidate": self.candidate, "profile": self.profile, "mode": self.mode,
            "passed": self.passed, "exit_code": self.exit_code,
            "first_divergence": None if self.first_divergence is None else asdict(self.first_divergence),
            "last_passing": self.last_passing, "hints": self.hints, "structural": self.structural,
            "producers": self.producers, "rows": [asdict(r) for r in self.rows],
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.to_dict()), indent=2, sort_keys=False)

    def summary(self) -> str:
        gated = [r for r in self.rows if r.gated]
        if self.structural:
            return f"STRUCTURAL MISMATCH ({len(self.structural)} problem(s))"
        if self.passed:
            return f"PASS ({len(gated)} probe(s) compared under profile {self.profile})"
        cases = {r.case for r in self.failed()}
        return (f"FAIL ({len(self.failed())} of {len(gated)} probe(s) out of tolerance in {len(cases)} case(s), "
                f"profile {self.profile})")  # fmt: skip

    def to_markdown(self, max_rows: int | None = None) -> str:
        out = [f"# Parity report: {self.summary()}", ""]
        out.append(f"- reference: `{self.reference}` ({_producer(self.producers.get('reference'))})")
        out.append(f"- candidate: `{self.candidate}` ({_producer(self.producers.get('candidate'))})")
        out.append(f"- profile: `{self.profile}`, mode: `{self.mode}`; exit code {self.exit_code}")
        out.append("")
        if self.structural:
            out.append("## Structural problems")
            out += [f"- {p}" for p in self.structural] + [""]
        if self.first_divergence is not None:
            r = self.first_divergence
            s = r.stats
            out.append("## First divergence")
            out.append(f"- **{r.case}/{r.probe}** (last passing probe before it: `{self.last_passing or 'none'}`)")
            if "worst_index" in s:
                tok = f", token id {s['worst_token']}" if s.get("worst_token") is not None else ""
                out.append(f"- worst element at index {s['worst_index']}{tok}: reference {s['worst_ref']:.8g}, "
                           f"candidate {s['worst_cand']:.8g}, |difference| {s['max_abs']:.3g} > "
                           f"{r.atol:g} + {r.rtol:g} * |reference|")  # fmt: skip
            if r.message:
                out.append(f"- {r.message}")
            out.append("")
        if self.hints:
            out.append("## Hints (guesses from the pattern of errors)")
            out += [f"- {h}" for h in self.hints] + [""]
        out.append("## Probes")
        out.append("")
        out.append(
            "| case | probe | tier | max_abs | ref noise | max_rel | mismatched | 1-cos | nmse | argmax | status |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        missing = [r for r in self.rows if r.status == "missing"]
        shown = [r for r in self.rows if r.status != "missing"]
        rows = shown if max_rows is None else shown[:max_rows]
        for r in rows:
            s = r.stats
            out.append(f"| {r.case} | {r.probe} | {r.tier} | {_f(s.get('max_abs'))} | {_f(s.get('ref_noise'))} | "
                       f"{_f(s.get('max_rel'))} | "
                       f"{_mism(s)} | {_f(s.get('cos_dist'))} | {_f(s.get('nmse'))} | {_pct(s.get('argmax_agree'))} "
                       f"| {r.status if r.status != 'ok' else 'ok'} |")  # fmt: skip
        if max_rows is not None and len(shown) > max_rows:
            out.append(f"| ... {len(shown) - max_rows} more rows | | | | | | | | | | |")
        if missing:
            out += ["", f"{len(missing)} debug probe(s) not provided by the candidate (not compared)."]
        out += ["", f"**RESULT: {self.summary()}**", ""]
        return "\n".join(out)

    def to_text(self) -> str:
        """A short report for the terminal: the verdict, the first divergence, hints, the failing probes."""
        lines = []
        for p in self.structural[:20]:
            lines.append(f"structural: {p}")
        if len(self.structural) > 20:
            lines.append(f"structural: ... and {len(self.structural) - 20} more")
        if self.first_divergence is not None:
            r = self.first_divergence
            s = r.stats
            lines.append(f"FIRST DIVERGENCE: {r.case}/{r.probe}  (last passing: {self.last_passing or 'none'})")
            if "worst_index" in s:
                tok = f" token id {s['worst_token']}" if s.get("worst_token") is not None else ""
                lines.append(f"  worst at {s['worst_index']}{tok}: ref {s['worst_ref']:.8g} cand {s['worst_cand']:.8g} "
                             f"|d| {s['max_abs']:.3g} (atol {r.atol:g}, rtol {r.rtol:g}); {_mism(s)} mismatched")  # fmt: skip
            if r.message:
                lines.append(f"  {r.message}")
        for h in self.hints:
            lines.append(f"hint: {h}")
        failed = self.failed()
        if failed:
            lines.append(f"failing probes ({len(failed)}):")
            for r in failed[:12]:
                lines.append(f"  {r.case}/{r.probe}: max_abs {_f(r.stats.get('max_abs'))}, {_mism(r.stats)} "
                             f"mismatched{'; ' + r.message if r.message else ''}")  # fmt: skip
            if len(failed) > 12:
                lines.append(f"  ... and {len(failed) - 12} more")
        lines.append(f"RESULT: {self.summary()}")
        return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else str(x)
    return x


def _producer(p) -> str:
    if not p or not p.get("library"):
        return "producer not recorded"
    return " ".join(str(p.get(k)) for k in ("library", "library_version") if p.get(k)) + (
        f", {p.get('compute_dtype')}" if p.get("compute_dtype") else ""
    )


def _f(x) -> str:
    return "-" if x is None else f"{x:.2e}" if isinstance(x, float) else str(x)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _mism(s) -> str:
    return "-" if "mismatch" not in s else f"{s['mismatch']}/{s['count']}"


# ============================================================================================ statistics
def valid_mask(shape, axis, valid) -> np.ndarray:
    """valid [B, L] broadcast to a probe of ``shape`` whose token axis is ``axis`` (batch axis 0)."""
    if (
        axis is None
        or valid is None
        or len(shape) <= axis
        or shape[0] != valid.shape[0]
        or shape[axis] != valid.shape[1]
    ):
        return np.ones(shape, bool)
    idx = [1] * len(shape)
    idx[0], idx[axis] = valid.shape
    v = valid.reshape([valid.shape[0]] + [1] * (axis - 1) + [valid.shape[1]] + [1] * (len(shape) - axis - 1))
    return np.broadcast_to(v, shape)


def probe_stats(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float, valid=None, axis=None, ids=None,
                kind: str = "hidden") -> dict:  # fmt: skip
    """Statistics of one probe on the valid positions (see the module docstring)."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    keep = valid_mask(r.shape, axis, valid)
    nf_r, nf_c = ~np.isfinite(r), ~np.isfinite(c)
    stats: dict = {"count": int(keep.sum())}
    disagree = keep & ((nf_r != nf_c) | (nf_r & nf_c & ~((np.isnan(r) & np.isnan(c)) | (r == c))))
    stats["nonfinite_ref"] = int((nf_r & keep).sum())
    stats["nonfinite_cand"] = int((nf_c & keep).sum())
    stats["nonfinite_disagree"] = int(disagree.sum())
    both = keep & ~nf_r & ~nf_c
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are inf: not compared
        err = np.where(both, np.abs(c - r), 0.0)
    bound = atol + rtol * np.abs(np.where(both, r, 0.0))
    bad = both & (err > bound)
    stats["mismatch"] = int(bad.sum()) + stats["nonfinite_disagree"]
    if not both.any():
        return stats
    e, rv, cv = err[both], r[both], c[both]
    stats["max_abs"] = float(e.max())
    stats["mean_abs"] = float(e.mean())
    stats["rms"] = float(np.sqrt(np.mean(e**2)))
    stats["p99_abs"] = float(np.quantile(e, 0.99))
    stats["max_rel"] = float((e / np.maximum(np.abs(rv), max(atol, REL_FLOOR))).max())
    denom = float(np.sum(rv**2))
    stats["nmse"] = float(np.sum((cv - rv) ** 2) / denom) if denom > 0 else (0.0 if not e.any() else float("inf"))
    nr, nc = np.linalg.norm(rv), np.linalg.norm(cv)
    stats["cos_dist"] = max(0.0, float(1.0 - rv @ cv / (nr * nc))) if nr > 0 and nc > 0 else (0.0 if nr == nc else 1.0)
    # the worst element: the largest excess over the bound (the largest error when none exceeds it)
    score = np.where(both, err - bound, -np.inf)
    where = np.unravel_index(int(np.argmax(score)), r.shape)
    stats["worst_index"] = [int(i) for i in where]
    stats["worst_ref"], stats["worst_cand"] = float(r[where]), float(c[where])
    stats["worst_abs"] = float(err[where])
    if ids is not None and axis is not None and len(where) > axis and r.shape[0] == ids.shape[0]:
        stats["worst_token"] = int(ids[where[0], where[axis]])
    if kind == "logits":
        stats["argmax_agree"] = _argmax_agreement(r, c, valid, axis)
    return stats


def _argmax_agreement(r, c, valid, axis) -> float:
    """Share of argmax decisions that agree: over the last axis for class logits ([B, N], [B, L, N], [1, C]),
    over the valid tokens for span logits ([B, L])."""
    if r.ndim == 2 and axis == 1:  # span logits [B, L]: the argmax over valid tokens of each row
        m = np.ones(r.shape, bool) if valid is None or valid.shape != r.shape else valid.astype(bool)
        ra = np.argmax(np.where(m, r, -np.inf), axis=1)
        ca = np.argmax(np.where(m, np.nan_to_num(c, nan=-np.inf), -np.inf), axis=1)
        return float(np.mean(ra == ca))
    ra, ca = np.argmax(r, axis=-1), np.argmax(np.nan_to_num(c, nan=-np.inf), axis=-1)
    agree = ra == ca
    if r.ndim == 3 and valid is not None and valid.shape == r.shape[:2]:
        agree = agree[valid.astype(bool)]
    return float(np.mean(agree)) if agree.size else 1.0


# ============================================================================================ comparison
def compare_bundles(reference, candidate, *, profile: str = "fp32", tier: str = "debug", cases=None,
                    probes=None, include_padding: bool = False, atol: float | None = None,
                    rtol: float | None = None, mode: str | None = None, calibrated: bool = False) -> Report:  # fmt: skip
    """Compare ``candidate`` with ``reference`` (Bundles, paths, or a dict of arrays for the candidate).

    ``mode``: "end_to_end" (the candidate ran its own forward pass) or "layer_local" (each of its stages was
    fed the reference's input; see produce.layer_local_probes); default: the candidate's ``mode`` metadata,
    else end_to_end. It is reported; the comparison itself is the same.
    ``calibrated``: per probe, atol = max(profile atol, CALIBRATION_FACTOR x the reference's float32 error
    recorded by ``erniem-np golden --calibrate``). The recorded error is reported as ``ref_noise`` either way.
    ``tier``: "core" compares only core probes; "debug" (default) also every debug probe the candidate has.
    ``cases``/``probes``: glob patterns restricting the comparison. ``atol``/``rtol`` override every kind's.
    Raises BundleError (kind "unreadable") when a file cannot be read; structural problems (missing core
    probes, wrong shapes, unknown cases) are reported in ``Report.structural`` (exit code 2).
    """
    ref, cand = as_bundle(reference), as_bundle(candidate)
    prof = schema.profile(profile)
    mode = mode or cand.metadata.get("mode") or "end_to_end"
    if mode not in ("end_to_end", "layer_local"):
        raise ValueError(f"mode must be end_to_end or layer_local, got {mode!r}")
    if tier not in ("core", "debug"):
        raise ValueError(f"tier must be core or debug, got {tier!r}")
    if "probes" not in ref.metadata or "config" not in ref.metadata:
        raise BundleError(f"{ref.name}: not a reference bundle (no probe list or config in its metadata)",
                          "unreadable")  # fmt: skip
    noise = (ref.metadata.get("tolerances") or {}).get("calibration") or {}
    if calibrated and not noise:
        raise ValueError(f"{ref.name} holds no calibration (write it with erniem-np golden --calibrate)")
    case_names = schema.select(ref.case_names(), cases)
    if cases and not case_names:
        raise ValueError(f"no reference case matches {cases}; cases are {', '.join(ref.case_names())}")
    catalogue = [p for p in ref.probes() if schema.tier_includes(tier, p["tier"])]
    wanted = set(schema.select([p["name"] for p in catalogue], probes))
    catalogue = [p for p in catalogue if p["name"] in wanted]

    structural = [p for p in validate(cand, against=ref) if p.split("/", 1)[0] in case_names or "/" not in p]
    structural = [p for p in structural if not (": missing core probe" in p and p.split(": ")[0].split("/", 1)[1]
                                                not in wanted)]  # fmt: skip
    rows: list[ProbeResult] = []
    order = {p["name"]: i for i, p in enumerate(ref.probes())}
    for case in case_names:
        ids = ref.get(case, "input.input_ids")
        valid = None if include_padding else _valid_tokens(ref, case)
        # inputs a candidate echoes back must match exactly (it read them from the reference)
        for name in [n for n in ref.input_names(case) if n.startswith("input.")]:
            if cand.has(case, name):
                a, b = cand.get(case, name), ref.get(case, name)
                ok = a.shape == b.shape and np.array_equal(a, b)
                rows.append(ProbeResult(case, name, "int", "core", "ok" if ok else "structural",
                                        message="" if ok else "the candidate's inputs differ from the reference's"))  # fmt: skip
                if not ok:
                    structural.append(f"{case}/{name}: the candidate ran on different inputs than the reference")
        in_case = {p["name"] for p in ref.case_probes(case)}
        for p in [p for p in catalogue if p["name"] in in_case]:
            name, kind = p["name"], p["kind"]
            if not cand.has(case, name):
                if p["tier"] == "debug":
                    rows.append(ProbeResult(case, name, kind, p["tier"], "missing"))
                continue  # a missing core probe is already a structural problem
            r_arr, c_arr = ref.get(case, name), cand.get(case, name)
            a_tol, r_tol = prof[kind]
            e32 = noise.get(f"{case}/{name}")
            if calibrated and e32 is not None:
                a_tol = max(a_tol, CALIBRATION_FACTOR * e32)
            a_tol = a_tol if atol is None else atol
            r_tol = r_tol if rtol is None else rtol
            if r_arr.shape != c_arr.shape:
                rows.append(ProbeResult(case, name, kind, p["tier"], "structural", a_tol, r_tol,
                                        message=f"shape {list(c_arr.shape)}, reference {list(r_arr.shape)}"))  # fmt: skip
                continue
            if c_arr.dtype.kind not in "fiu":
                structural.append(f"{case}/{name}: dtype {c_arr.dtype} is not numeric")
                continue
            st = probe_stats(r_arr, c_arr, a_tol, r_tol, valid, schema.token_axis(name), ids, kind)
            if e32 is not None:
                st["ref_noise"] = e32
            ok = st["mismatch"] == 0
            msg = []
            if st["nonfinite_disagree"]:
                msg.append(f"{st['nonfinite_disagree']} non-finite value(s) disagree "
                           f"(reference {st['nonfinite_ref']}, candidate {st['nonfinite_cand']} non-finite)")  # fmt: skip
            if "nmse_max" in prof and st.get("nmse", 0.0) > prof["nmse_max"]:
                ok = False
                msg.append(f"NMSE {st['nmse']:.2e} > {prof['nmse_max']:g}")
            if "cosd_max" in prof and st.get("cos_dist", 0.0) > prof["cosd_max"]:
                ok = False
                msg.append(f"1-cos {st['cos_dist']:.2e} > {prof['cosd_max']:g}")
            if kind == "logits" and st.get("argmax_agree", 1.0) < prof.get("argmax_min", 1.0):
                ok = False
                msg.append(f"argmax agrees on {100 * st['argmax_agree']:.1f}% < {100 * prof['argmax_min']:.0f}%")
            rows.append(ProbeResult(case, name, kind, p["tier"], "ok" if ok else "FAIL", a_tol, r_tol, st,
                                    "; ".join(msg)))  # fmt: skip
        structural += [f"{case}/{r.probe}: {r.message}" for r in rows if r.case == case and r.status == "structural"
                       and r.kind != "int"]  # fmt: skip

    first, last_ok = _first_divergence(rows, order)
    hints = _hints(ref, cand, rows, first, order) if first is not None else []
    producers = {"reference": {**(ref.metadata.get("producer") or {}),
                               "compute_dtype": ref.metadata.get("compute_dtype")},
                 "candidate": {**(cand.metadata.get("producer") or {}),
                               "compute_dtype": cand.metadata.get("compute_dtype")}}  # fmt: skip
    return Report(ref.name, cand.name, profile, mode, rows, first, last_ok, hints, sorted(set(structural)),
                  producers)  # fmt: skip


def _valid_tokens(ref: Bundle, case: str) -> np.ndarray | None:
    """The valid tokens [B, L] of a case: its 2-D attention mask when it has the shape of its ids (a call case
    may pass none, a 4-D one, or one that covers a cache too: then every position counts)."""
    mask, ids = ref.get(case, "input.attention_mask"), ref.get(case, "input.input_ids")
    if mask is None or ids is None or mask.ndim != 2 or mask.shape != ids.shape:
        return None
    return mask.astype(bool)


def _first_divergence(rows, order) -> tuple[ProbeResult | None, str | None]:
    failing = [r for r in rows if r.status in ("FAIL", "structural") and r.probe in order]
    if not failing:
        return None, None
    first = min(failing, key=lambda r: order[r.probe])
    compared = {}
    for r in rows:
        if r.probe in order and r.status in ("ok", "FAIL", "structural"):
            compared.setdefault(r.probe, True)
            compared[r.probe] &= r.status == "ok"
    before = [p for p, ok in compared.items() if ok and order[p] < order[first.probe]]
    return first, max(before, key=order.get) if before else None


def assert_bundles_close(reference, candidate, **kwargs) -> Report:
    """compare_bundles, raising AssertionError with the terminal report when the candidate does not pass."""
    report = compare_bundles(reference, candidate, **kwargs)
    if report.exit_code != EXIT_PASS:
        raise AssertionError(report.to_text())
    return report


# ============================================================================================ hints
def _hints(ref: Bundle, cand: Bundle, rows, first: ProbeResult, order) -> list[str]:
    """Guesses at the cause from where the first divergence is and what its errors look like."""
    probe, case = first.probe, first.case
    s = first.stats
    big = s.get("max_abs", 0.0)
    status = {(r.case, r.probe): r.status for r in rows}

    def ok(name):
        return status.get((case, name)) == "ok"

    def has(name):
        return status.get((case, name)) in ("ok", "FAIL")

    hints = []
    if first.status == "structural":
        return [f"{probe} has the wrong shape: check the layout ([B, nh, L, d] for q/k/v, row-major)"]
    if probe == "emb.out":
        if big > 0.1:
            hints.append("embeddings off by O(1): the +2 position offset missing or doubled (ErnieM reads row "
                         "position_id + 2 of the position table), or the wrong embedding table/rows")  # fmt: skip
        else:
            hints.append("small embedding error: the LayerNorm eps (ErnieM uses 1e-5, BERT 1e-12) or the "
                         "variance (biased, over the last axis)")  # fmt: skip
        return hints
    layer, sub = probe.split(".", 2)[1:] if probe.startswith("layer.") else (None, probe)
    pre = f"layer.{layer}." if layer is not None else ""
    if sub in ("attn.q", "attn.k", "attn.v"):
        r, c = ref.get(case, probe), cand.get(case, probe)
        B, nh, L, d = r.shape
        as_set = np.allclose(np.sort(r.transpose(0, 2, 1, 3).reshape(B, L, -1), -1),
                             np.sort(c.transpose(0, 2, 1, 3).reshape(B, L, -1), -1), atol=first.atol, rtol=first.rtol)  # fmt: skip
        if as_set:
            hints.append(f"{probe} holds the right values in the wrong places: the head split order "
                         "(reshape [B, L, nh, d] then transpose to [B, nh, L, d]; head h = channels h*d..(h+1)*d-1)")  # fmt: skip
        else:
            hints.append(f"{probe} is wrong with its input (the previous layer's out) right: the {sub[-1]}_proj "
                         "weight transposed ([out, in] in HF, [in, out] in Paddle) or its bias")  # fmt: skip
    elif sub == "attn.scores":
        hints.append("scores wrong with q and k right: the scaling (divide by sqrt(head size)) or q/k swapped")
    elif sub == "attn.probs":
        hints += _mask_hints(ref, cand, case, probe)
        if not hints and not has(pre + "attn.scores"):
            hints.append(f"{probe} is the first core probe of the layer: produce the debug tier (attn.q/k/v, "
                         "attn.scores) to tell a head-order, weight-layout or scaling bug apart")  # fmt: skip
        elif not hints:
            hints.append("probabilities wrong with scores right: the softmax axis, or the mask added")
    elif sub == "attn.context":
        hints.append("context wrong with the probabilities right: v, or merging the heads back ([B, nh, L, d] -> "
                     "[B, L, nh*d])")  # fmt: skip
    elif sub == "attn.out":
        hints.append("attn.out wrong with the context right: the out_proj weight transposed, or its bias")
    elif sub == "norm1.out":
        hints.append("norm1 wrong with attn.out right: the residual (x + attn.out, post-LN) or the LayerNorm eps "
                     "(1e-5)")  # fmt: skip
    elif sub == "ffn.up":
        hints.append("ffn.up wrong with norm1 right: the linear1 weight transposed, or its bias")
    elif sub == "ffn.act":
        if big < 1e-2:
            hints.append("activation off by < 1e-2 with ffn.up right: the tanh approximation of GELU (gelu_new, "
                         "approximate='tanh') instead of ErnieM's exact erf GELU")  # fmt: skip
        else:
            hints.append("activation wrong with ffn.up right: the wrong activation function (ErnieM: exact GELU)")
    elif sub == "ffn.down":
        hints.append("ffn.down wrong with ffn.act right: the linear2 weight transposed, or its bias")
    elif sub == "out":
        if has(pre + "ffn.down") or has(pre + "norm1.out"):
            hints.append("the layer output wrong with ffn.down right: the second residual (norm1.out + ffn.down) or "
                         "norm2's eps")  # fmt: skip
        elif ok(pre + "attn.probs"):
            if big < 1e-2:
                hints.append("small error after the attention probabilities: the tanh approximation of GELU or the "
                             "LayerNorm eps (1e-5); produce the debug tier (norm1.out, ffn.up, ffn.act) to tell")  # fmt: skip
            else:
                hints.append("large error after correct attention probabilities: a transposed out_proj/linear1/"
                             "linear2 weight, pre-LN instead of post-LN, or v; produce the debug tier to bisect")  # fmt: skip
    elif probe == "pooler.out":
        hints.append("pooler wrong with the last layer right: tanh(dense(h[:, 0])) on the first token, dense "
                     "weight layout")  # fmt: skip
    elif probe.startswith("head."):
        hints.append("only the head is wrong: its weights or names (QA: HF qa_outputs, Paddle classifier), its "
                     "input (pooler for seq_cls/mc, last hidden state otherwise), or a sigmoid applied to logits")  # fmt: skip
    return hints


def _mask_hints(ref, cand, case, probe) -> list[str]:
    """Where the attention errors sit: on masked keys, on key 0 ([CLS]), or everywhere."""
    r, c = ref.get(case, probe).astype(np.float64), cand.get(case, probe).astype(np.float64)
    mask = _valid_tokens(ref, case)  # [B, Lk]
    if mask is None:
        return []
    ids = ref.get(case, "input.input_ids")
    rows = mask[:, None, :, None]  # valid query rows
    err = np.where(rows, np.abs(c - r), 0.0)
    if not np.isfinite(err).all() or err.max() == 0:
        return []
    total = err.sum()
    on_masked = err[..., ~mask[0]].sum() if r.shape[0] == 1 else sum(
        err[b][..., ~mask[b]].sum() for b in range(r.shape[0]))  # fmt: skip
    on_zero_ids = sum(err[b][..., ids[b] == 0].sum() for b in range(r.shape[0]))
    hints = []
    if on_masked > 0.5 * total:
        hints.append("attention errors sit on masked (padding) keys: the explicit attention mask ignored or its "
                     "polarity flipped (1 = attend, 0 = masked)")  # fmt: skip
    elif on_zero_ids > 0.3 * total:
        hints.append("attention errors sit on keys with id 0 ([CLS]): Paddle's default mask (ids == 0 masked) used "
                     "instead of the explicit mask; pass the attention mask the bundle gives")  # fmt: skip
    return hints
