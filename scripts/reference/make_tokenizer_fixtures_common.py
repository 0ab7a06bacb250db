"""What the two tokenizer-golden scripts share: the inputs, the records and the output file.

Imported by make_tokenizer_fixtures_hf.py (HF reference environment) and make_tokenizer_fixtures_paddle.py
(Paddle reference environment) from this directory; standard library only. The inputs (lines.jsonl,
cases.json) are written by scripts/data/make_tokenizer_fixtures.py; the records are described at the top of
make_tokenizer_fixtures_hf.py.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "tokenizer"
MODELS = ("bpe", "unigram")


def read_inputs() -> tuple[list[str], list[dict]]:
    """The golden lines (lines.jsonl) and the call cases (cases.json)."""
    lines = [json.loads(s) for s in (FIX / "lines.jsonl").read_text(encoding="utf-8").split("\n") if s]
    cases = json.loads((FIX / "cases.json").read_text(encoding="utf-8"))
    return lines, cases


def plain(x):
    """A tokenizer's output as plain JSON values (lists for tuples and arrays, dicts for BatchEncoding)."""
    if isinstance(x, dict) or hasattr(x, "keys"):
        return {k: plain(x[k]) for k in x}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


def line_record(tok, model: str, lower: bool, i: int, s: str) -> dict:
    """The "line" record of line ``i``: tokens, ids and decodes, or the error the reference raised."""
    r = {"kind": "line", "model": model, "lower": lower, "i": i}
    try:
        toks = tok.tokenize(s)
        ids = tok.convert_tokens_to_ids(toks)
        full = tok.build_inputs_with_special_tokens(ids)
        r.update(tokens=toks, ids=ids, decode=tok.decode(full), decode_skip=tok.decode(full, skip_special_tokens=True))
    except Exception as e:  # noqa: BLE001  (the reference's own failure is part of the golden)
        r["error"] = f"{type(e).__name__}: {e}"
    return r


def case_records(tok, model: str, cases: list[dict], flavor: str) -> list[dict]:
    """The "case" records of the cases meant for ``flavor``: the call's output, or its error."""
    recs = []
    for c in cases:
        if flavor not in c["flavors"]:
            continue
        r = {"kind": "case", "model": model, "name": c["name"]}
        try:
            r["output"] = plain(tok(c["text"], c["text_pair"], **c["kwargs"]))
        except Exception as e:  # noqa: BLE001
            r["error"] = f"{type(e).__name__}: {e}"
        recs.append(r)
    return recs


def write_records(name: str, recs: list[dict]) -> None:
    """One JSON record per line, gzip with mtime 0 (a rerun writes the same bytes)."""
    with gzip.GzipFile(FIX / name, "wb", mtime=0) as f:
        for r in recs:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
