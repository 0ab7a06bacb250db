# Write tests/fixtures/tokenizer/goldens_paddle.jsonl.gz with PaddleNLP's ErnieMTokenizer (2.8.1, paddle 2.6.2).
#
# Run from the repository root inside the Paddle reference environment (after `make_tokenizer_fixtures.py lines`):
#
#     .venv-ref-paddle/bin/python scripts/make_tokenizer_fixtures_paddle.py
#
# Records as in make_tokenizer_fixtures_hf.py, and each "line" record also has "offsets" (get_offset_mapping)
# or "offsets_error" when PaddleNLP raises there.
import gzip
import json
import logging
import platform
import sys
import warnings
from pathlib import Path

import aiohttp  # noqa: F401  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)
import paddle
import paddlenlp
import sentencepiece
from paddlenlp.transformers import ErnieMTokenizer
from paddlenlp.utils.log import logger as pd_logger

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "tokenizer"
logging.disable(logging.WARNING)
warnings.simplefilter("ignore")
pd_logger.disable() if hasattr(pd_logger, "disable") else None


def load(model: str, lower: bool) -> ErnieMTokenizer:
    # from_pretrained, as users and Taskflow load it: only from_pretrained registers the special tokens as
    # no-split tokens (sanitize_special_tokens); a directly constructed PaddleNLP ErnieMTokenizer lets
    # SentencePiece cut "[SEP]" in a text into "[", "S", "E", "P", "]".
    return ErnieMTokenizer.from_pretrained(str(FIX / model), do_lower_case=lower)


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
    recs = [{"kind": "meta", "reference": "paddle", "paddlenlp": paddlenlp.__version__, "paddle": paddle.__version__,
             "sentencepiece": sentencepiece.__version__, "python": platform.python_version(),
             "lines": len(lines), "cases": len(cases)}]  # fmt: skip
    n_err = n_off = 0
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
                try:
                    r["offsets"] = [list(o) for o in tok.get_offset_mapping(s)]
                except Exception as e:  # noqa: BLE001
                    r["offsets_error"] = f"{type(e).__name__}: {e}"
                    n_off += 1
                recs.append(r)
        tok = load(model, False)
        for c in cases:
            if "paddle" not in c["flavors"]:
                continue
            r = {"kind": "case", "model": model, "name": c["name"]}
            try:
                r["output"] = plain(tok(c["text"], c["text_pair"], **c["kwargs"]))
            except Exception as e:  # noqa: BLE001
                r["error"] = f"{type(e).__name__}: {e}"
            recs.append(r)
    with gzip.GzipFile(FIX / "goldens_paddle.jsonl.gz", "wb", mtime=0) as f:
        for r in recs:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    print(
        f"goldens_paddle.jsonl.gz: {len(recs)} records ({n_err} lines where tokenize raises, "
        f"{n_off} where get_offset_mapping raises)"
    )


if __name__ == "__main__":
    sys.exit(main())
