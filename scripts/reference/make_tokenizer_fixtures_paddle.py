# Write tests/fixtures/tokenizer/goldens_paddle.jsonl.gz and special_text_paddle.json with PaddleNLP's
# ErnieMTokenizer (2.8.1, paddle 2.6.2).
#
# Run from the repository root inside the Paddle reference environment, after
# `scripts/data/make_tokenizer_fixtures.py lines`:
#
#     .venv-ref-paddle/bin/python scripts/reference/make_tokenizer_fixtures_paddle.py
#     .venv-ref-paddle/bin/python scripts/reference/make_tokenizer_fixtures_paddle.py --special-text-only
#
# goldens_paddle.jsonl.gz: records as in make_tokenizer_fixtures_hf.py, and each "line" record also has "offsets"
# (get_offset_mapping) or "offsets_error" when PaddleNLP raises there.
# special_text_paddle.json: texts holding special-token strings ("[SEP] inside [CLS] text") per model and
# do_lower_case: tokenize, the input_ids of a call, get_offset_mapping (or its error), and the tokens of a
# directly constructed tokenizer. --special-text-only writes just this file.
import json
import logging
import platform
import sys
import warnings

import aiohttp  # noqa: F401  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)
import paddle
import paddlenlp
import sentencepiece
from make_tokenizer_fixtures_common import FIX, MODELS, case_records, line_record, plain, read_inputs, write_records
from paddlenlp.transformers import ErnieMTokenizer
from paddlenlp.utils.log import logger as pd_logger

logging.disable(logging.WARNING)
warnings.simplefilter("ignore")
pd_logger.disable() if hasattr(pd_logger, "disable") else None


def load(model: str, lower: bool) -> ErnieMTokenizer:
    # from_pretrained, as users and Taskflow load it: only from_pretrained registers the special tokens as
    # no-split tokens (sanitize_special_tokens); a directly constructed PaddleNLP ErnieMTokenizer lets
    # SentencePiece cut "[SEP]" in a text into "[", "S", "E", "P", "]".
    return ErnieMTokenizer.from_pretrained(str(FIX / model), do_lower_case=lower)


# Special-token strings inside text: alone, glued to words, repeated, in another case, broken, full-width,
# next to CJK / digits / sigma / "İ", around whitespace.
SPECIAL_TEXTS = [
    "[SEP] inside [CLS] text", "[SEP]", "[CLS]", "[PAD]", "[UNK]", "[MASK]", "a[SEP]b", "a [SEP] b", "  [SEP]  ",
    "[SEP][SEP]", "[SEP] [SEP]", "Hello [MASK] World", "HELLO[PAD]WORLD", "x[UNK]y", "[CLS]Start", "End[SEP]",
    "[sep] lower", "[Sep] mixed", "[SEP", "SEP]", "[[SEP]]", "[ SEP ]", "［SEP］ full-width", "[ＳＥＰ] full",
    "我爱[SEP]北京", "123[SEP]456", "ΟΔΟΣ [SEP] ΣΑΣ", "İ[SEP]İ", "[MASK][MASK][MASK]", "The [MASK] is [UNK].",
    "[SEP]\t[CLS]\n[PAD]", "[SEP][SEP][SEP][SEP][SEP]",
]  # fmt: skip


def special_text(meta: dict) -> None:
    """special_text_paddle.json: how PaddleNLP tokenizes special-token strings that occur in the text."""
    recs = []
    for model in MODELS:
        for lower in (False, True):
            tok = load(model, lower)
            direct = ErnieMTokenizer(vocab_file=str(FIX / model / "vocab.txt"),
                                     sentencepiece_model_file=str(FIX / model / "sentencepiece.bpe.model"),
                                     do_lower_case=lower)  # fmt: skip
            for s in SPECIAL_TEXTS:
                r = {"model": model, "lower": lower, "text": s, "tokens": tok.tokenize(s),
                     "input_ids": plain(tok(s)["input_ids"])}  # fmt: skip
                try:
                    r["offsets"] = [list(o) for o in tok.get_offset_mapping(s)]
                except Exception as e:  # noqa: BLE001  (the reference's own failure is part of the golden)
                    r["offsets_error"] = f"{type(e).__name__}: {e}"
                r["direct_tokens"] = direct.tokenize(s)
                recs.append(r)
    out = {
        "note": "Written by `.venv-ref-paddle/bin/python scripts/reference/make_tokenizer_fixtures_paddle.py "
        "--special-text-only` (or a full run of that script). tokens = tokenize(text), input_ids = "
        "tokenizer(text)['input_ids'], offsets = get_offset_mapping(text) (offsets_error where it raises), for "
        "ErnieMTokenizer.from_pretrained(<model dir>, do_lower_case=lower); direct_tokens = tokenize(text) of "
        "ErnieMTokenizer(vocab_file=..., sentencepiece_model_file=..., do_lower_case=lower).",
        "meta": {k: meta[k] for k in ("paddlenlp", "paddle", "sentencepiece", "python")},
        "records": recs,
    }
    with open(FIX / "special_text_paddle.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps({k: v for k, v in out.items() if k != "records"}, ensure_ascii=False)[:-1])
        f.write(', "records": [\n')  # one record per line
        f.write(",\n".join(json.dumps(r, ensure_ascii=False) for r in recs))
        f.write("\n]}\n")
    print(f"special_text_paddle.json: {len(recs)} records")


def main() -> None:
    meta = {"paddlenlp": paddlenlp.__version__, "paddle": paddle.__version__,
            "sentencepiece": sentencepiece.__version__, "python": platform.python_version()}  # fmt: skip
    special_text(meta)
    if "--special-text-only" in sys.argv[1:]:
        return
    lines, cases = read_inputs()
    recs = [{"kind": "meta", "reference": "paddle", "paddlenlp": paddlenlp.__version__, "paddle": paddle.__version__,
             "sentencepiece": sentencepiece.__version__, "python": platform.python_version(),
             "lines": len(lines), "cases": len(cases)}]  # fmt: skip
    n_err = n_off = 0
    for model in MODELS:
        for lower in (False, True):
            tok = load(model, lower)
            for i, s in enumerate(lines):
                r = line_record(tok, model, lower, i, s)
                n_err += "error" in r
                try:
                    r["offsets"] = [list(o) for o in tok.get_offset_mapping(s)]
                except Exception as e:  # noqa: BLE001
                    r["offsets_error"] = f"{type(e).__name__}: {e}"
                    n_off += 1
                recs.append(r)
        recs += case_records(load(model, False), model, cases, "paddle")
    write_records("goldens_paddle.jsonl.gz", recs)
    print(
        f"goldens_paddle.jsonl.gz: {len(recs)} records ({n_err} lines where tokenize raises, "
        f"{n_off} where get_offset_mapping raises)"
    )


if __name__ == "__main__":
    sys.exit(main())
