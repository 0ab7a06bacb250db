# Write tests/fixtures/tokenizer/goldens_hf.jsonl.gz with HF transformers' ErnieMTokenizer (4.46.3).
#
# Run from the repository root inside the HF reference environment, after
# `scripts/data/make_tokenizer_fixtures.py lines`:
#
#     .venv-ref-hf/bin/python scripts/reference/make_tokenizer_fixtures_hf.py
#
# Records (one JSON object per line):
#   {"kind": "meta", ...versions...}
#   {"kind": "line", "model": "bpe"|"unigram", "lower": bool, "i": line index, "tokens": [...], "ids": [...],
#    "decode": str, "decode_skip": str}          or {"kind": "line", ..., "error": "IndexError: ..."}
#   {"kind": "case", "model": ..., "name": ..., "output": {key: value}}   or  {..., "error": "..."}

import logging
import platform
import sys
import warnings

import sentencepiece
import torch
import transformers
from make_tokenizer_fixtures_common import FIX, MODELS, case_records, line_record, read_inputs, write_records
from transformers import ErnieMTokenizer

transformers.logging.set_verbosity_error()
logging.disable(logging.WARNING)
warnings.simplefilter("ignore")


def load(model: str, lower: bool) -> ErnieMTokenizer:
    return ErnieMTokenizer.from_pretrained(str(FIX / model), do_lower_case=lower)  # reads model_max_length 512


def main() -> None:
    lines, cases = read_inputs()
    recs = [{"kind": "meta", "reference": "hf", "transformers": transformers.__version__, "torch": torch.__version__,
             "sentencepiece": sentencepiece.__version__, "python": platform.python_version(),
             "lines": len(lines), "cases": len(cases)}]  # fmt: skip
    n_err = 0
    for model in MODELS:
        for lower in (False, True):
            tok = load(model, lower)
            for i, s in enumerate(lines):
                recs.append(line_record(tok, model, lower, i, s))
                n_err += "error" in recs[-1]
        recs += case_records(load(model, False), model, cases, "hf")
    write_records("goldens_hf.jsonl.gz", recs)
    print(f"goldens_hf.jsonl.gz: {len(recs)} records ({n_err} lines where HF raises)")


if __name__ == "__main__":
    sys.exit(main())
