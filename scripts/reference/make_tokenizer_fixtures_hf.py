# Write tests/fixtures/tokenizer/goldens_hf.jsonl.gz with HF transformers' ErnieMTokenizer (4.46.3).
#
# Run from the repository root inside the HF reference environment (after `make_tokenizer_fixtures.py lines`):
#
#     .venv-ref-hf/bin/python scripts/make_tokenizer_fixtures_hf.py
#
# Records (one JSON object per line):
#   {"kind": "meta", ...versions...}
#   {"kind": "line", "model": "bpe"|"unigram", "lower": bool, "i": line index, "tokens": [...], "ids": [...],
#    "decode": str, "decode_skip": str}          or {"kind": "line", ..., "error": "IndexError: ..."}
#   {"kind": "case", "model": ..., "name": ..., "output": {key: value}}   or  {..., "error": "..."}

import gzip
import json
import logging
import platform
import sys
import warnings
from pathlib import Path

import sentencepiece
import torch
import transformers
from transformers import ErnieMTokenizer

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "tokenizer"
transformers.logging.set_verbosity_error()
logging.disable(logging.WARNING)
warnings.simplefilter("ignore")


def load(model: str, lower: bool) -> ErnieMTokenizer:
    return ErnieMTokenizer.from_pretrained(str(FIX / model), do_lower_case=lower)  # reads model_max_length 512


def plain(x):
    if isinstance(x, dict) or hasattr(x, "keys"):
        return {k: plain(x[k]) for k in x}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


def main() -> None:
    lines = [json.loads(s) for s in (FIX / "lines.jsonl").read_text(encoding="utf-8").split("\n") if s]
    cases = json.loads((FIX / "cases.json").read_text(encoding="utf-8"))
    recs = [{"kind": "meta", "reference": "hf", "transformers": transformers.__version__, "torch": torch.__version__,
             "sentencepiece": sentencepiece.__version__, "python": platform.python_version(),
             "lines": len(lines), "cases": len(cases)}]  # fmt: skip
    n_err = 0
    for model in ("bpe", "unigram"):
        for lower in (False, True):
            tok = load(model, lower)
            for i, s in enumerate(lines):
                r = {"kind": "line", "model": model, "lower": lower, "i": i}
                try:
                    toks = tok.tokenize(s)
                    ids = tok.convert_tokens_to_ids(toks)
                    full = tok.build_inputs_with_special_tokens(ids)
                    r.update(tokens=toks, ids=ids, decode=tok.decode(full),
                             decode_skip=tok.decode(full, skip_special_tokens=True))  # fmt: skip
                except Exception as e:  # noqa: BLE001  (the reference's own failure is part of the golden)
                    r["error"] = f"{type(e).__name__}: {e}"
                    n_err += 1
                recs.append(r)
        tok = load(model, False)
        for c in cases:
            if "hf" not in c["flavors"]:
                continue
            r = {"kind": "case", "model": model, "name": c["name"]}
            try:
                r["output"] = plain(tok(c["text"], c["text_pair"], **c["kwargs"]))
            except Exception as e:  # noqa: BLE001
                r["error"] = f"{type(e).__name__}: {e}"
            recs.append(r)
    with gzip.GzipFile(FIX / "goldens_hf.jsonl.gz", "wb", mtime=0) as f:
        for r in recs:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"goldens_hf.jsonl.gz: {len(recs)} records ({n_err} lines where HF raises)")


if __name__ == "__main__":
    sys.exit(main())
