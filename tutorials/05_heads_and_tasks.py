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
# # 5. Heads and tasks: classification, question-answer spans, UIE-M extraction step by step
#
# The code this chapter explains: the heads in `erniem_np/model.py` (`ErnieMForSequenceClassification`,
# `ErnieMForQuestionAnswering`, `ErnieMForInformationExtraction`) and the pipelines that turn their outputs
# into answers: `erniem_np/pipelines/classify.py` (`Classifier`), `erniem_np/pipelines/qa.py`
# (`QuestionAnswerer`, `select_starts_ends`, `decode_spans`) and `erniem_np/pipelines/extract.py` (`Extractor`,
# `get_bool_ids_greater_than`, `get_span`, `get_id_and_prob`, `convert_ids_to_results`).
#
# The encoder gives one vector per token. A head is a small layer on top; a task is the head plus the
# decoding that turns numbers back into text.

# %%
import os
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt
import numpy as np

from erniem_np import (
    Classifier,
    ErnieMConfig,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMTokenizer,
    Extractor,
    QuestionAnswerer,
)
from erniem_np.pipelines import extract
from erniem_np.testing import random_weights, split_head

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "erniem_np").is_dir() and (p / "tutorials").is_dir())
FIGURES = Path(os.environ.get("TUTORIAL_FIGURES", ROOT / "tutorials" / "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
LANGID = ROOT / "erniem_np" / "data" / "langid"  # the bundled language-identification model


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# %% [markdown]
# ## Sequence classification: the pooler, then one Linear layer
#
# `ErnieMForSequenceClassification` reads the final state of the first token (`[CLS]`), passes it through the
# pooler (chapter 4) and one Linear layer, `classifier`, to one logit per label
# (`docs/reference.md#m8-heads-and-losses`; dropout before `classifier` is the identity at inference):
#
# $$p = \tanh\big(h_{:,0}\, W_d^\top + b_d\big) \in [B, H], \qquad z = p\, W_c^\top + b_c \in [B, N], \qquad
# P(c \mid \text{text}) = \mathrm{softmax}(z)_c = \frac{e^{z_c}}{\sum_{c'} e^{z_{c'}}}$$
#
# with $h$ the last hidden states, $W_d$ = `ernie_m.pooler.dense.weight` $[H, H]$ and $W_c$ = `classifier.weight`
# $[N, H]$ ($N$ labels). The bundled demo model does this for 31 languages (`erniem-np demo` runs it).

# %%
model = ErnieMForSequenceClassification.from_pretrained(LANGID)
tok = ErnieMTokenizer.from_pretrained(LANGID)
texts = ["Where is the train station?", "¿Dónde está la estación de tren?", "Wo ist der Bahnhof?", "火车站在哪里？"]
enc = tok(texts, padding=True, return_tensors="np")
out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
print(out.logits.shape)  # [B, num_labels]

# %% [markdown]
# Re-derived by hand from the encoder's pooled output and the classifier's weights (names from the
# checkpoint):

# %%
sd = model.state_dict()
base = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
h_cls = base.hidden_states[-1][:, 0]  # [B, L, H] -> [B, H]: the [CLS] token's final state
pooled = np.tanh(h_cls @ sd["ernie_m.pooler.dense.weight"].T + sd["ernie_m.pooler.dense.bias"])
logits = pooled @ sd["classifier.weight"].T + sd["classifier.bias"]  # [B, H] -> [B, num_labels]
assert np.allclose(logits, out.logits, atol=1e-4)

probs = softmax(logits)
labels = model.config.id2label
for text, p in zip(texts, probs, strict=True):
    k = int(p.argmax())
    print(f"{labels[k]} {p[k]:.3f}  {text}")

# %% [markdown]
# The `Classifier` pipeline does the same, in the output shape of HF's text-classification pipeline (softmax
# unless the config says multi-label or regression).
#
# Given labels $y_i$, the head's loss is the mean cross-entropy over the labels that are not the ignore index
# $-100$ (`layers.cross_entropy`, computed with a max-subtracted log-sum-exp):
#
# $$\mathcal{L} = \frac{1}{|K|} \sum_{i \in K} \Big(\log \sum_{c} e^{z_{i,c}} - z_{i, y_i}\Big), \qquad
# K = \{\, i : y_i \ne -100 \,\}.$$
#
# With one label ($N = 1$) it is the mean squared error instead, and with float multi-hot labels the mean binary
# cross-entropy with logits, $\max(z, 0) - z y + \log(1 + e^{-|z|})$ (`problem_type`, inferred as HF does).

# %%
clf = Classifier(str(LANGID))
results = clf(texts)
for r, p in zip(results, probs, strict=True):
    assert r["label"] == labels[int(p.argmax())] and abs(r["score"] - p.max()) < 1e-5
print(results)

# %% [markdown]
# ## Extractive question answering: two logits per token, then the best span
#
# `ErnieMForQuestionAnswering` has a Linear layer `qa_outputs` from each token's state to two numbers: how
# likely the answer starts here, how likely it ends here (no pooler, no dropout):
#
# $$\big[z^{s}_{b,j},\ z^{e}_{b,j}\big] = h_{b,j}\, W_{qa}^\top + b_{qa}, \qquad W_{qa} = \texttt{qa\_outputs.weight}
# \ [2, H]$$
#
# The input is `[CLS] question [SEP] [SEP] context [SEP]`. Decoding (HF's `question-answering` pipeline, which
# `QuestionAnswerer` follows): the logits of tokens that cannot hold an answer are replaced by $-10^4$ (all but
# the context and `[CLS]`, which stands for "no answer"), each row is softmaxed, and the span with the largest
# product wins:
#
# $$p^{s} = \mathrm{softmax}(\tilde z^{s}), \quad p^{e} = \mathrm{softmax}(\tilde z^{e}), \qquad
# (\hat s, \hat e) = \operatorname*{arg\,max}_{s \le e < s + \ell_{max}} p^{s}_{s}\, p^{e}_{e};$$
#
# the tokenizer's offsets map it back to characters. Training averages two cross-entropies,
# $\mathcal{L} = \tfrac{1}{2}\big(\mathrm{CE}(z^{s}, s^{*}) + \mathrm{CE}(z^{e}, e^{*})\big)$, with the gold
# positions clamped to $[0, L]$ and $L$ as the ignore index (exercise 2).
#
# No QA model is bundled, so we build one with random weights (its answers are arbitrary; the decoding is
# what we check).

# %%
workdir = Path(tempfile.mkdtemp())
fixture_tokenizer = ROOT / "tests" / "fixtures" / "tokenizer" / "bpe"
config = {"vocab_size": 4002, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64, "max_position_embeddings": 130}  # fmt: skip
qa_dir = workdir / "qa"
ErnieMForQuestionAnswering(
    ErnieMConfig(**config, num_labels=2), split_head(random_weights(config, 12), "qa")
).save_pretrained(qa_dir)
for name in ("sentencepiece.bpe.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(fixture_tokenizer / name, qa_dir)

question, context = "Who visited Paris?", "Angela Merkel visited Paris on the 3rd of May, and then flew home."
qa = QuestionAnswerer(str(qa_dir), max_answer_len=15, align_to_words=False)  # token offsets, see below
best = qa(question=question, context=context)
print(best)

# %% [markdown]
# By brute force: every span, scored from scratch.

# %%
qa_tok, qa_model = qa.tokenizer, qa.model
enc = qa_tok(question, context, return_offsets_mapping=True)
ids = np.array([enc["input_ids"]])
out = qa_model(input_ids=ids, attention_mask=np.ones_like(ids))
first_context = len(qa_tok.tokenize(question)) + 3  # [CLS] question [SEP] [SEP] -> the context starts here
can_answer = np.zeros(ids.shape[1], bool)
can_answer[first_context:-1] = True  # the context's tokens (not the final [SEP])
p_start = softmax(np.where(can_answer | (np.arange(ids.shape[1]) == 0), out.start_logits[0], -10000.0))
p_end = softmax(np.where(can_answer | (np.arange(ids.shape[1]) == 0), out.end_logits[0], -10000.0))
scores = np.triu(np.outer(p_start, p_end)) * np.tril(np.ones((ids.shape[1],) * 2), 14)  # s <= e < s + 15
scores[~can_answer, :] = 0
scores[:, ~can_answer] = 0
s, e = np.unravel_index(scores.argmax(), scores.shape)
start_char, end_char = enc["offset_mapping"][s][0], enc["offset_mapping"][e][1]
print(f"brute force: tokens {s}..{e}, score {scores[s, e]:.6f}, {context[start_char:end_char]!r}")
assert abs(scores[s, e] - best["score"]) < 1e-6 and (start_char, end_char) == (best["start"], best["end"])

fig, ax = plt.subplots(figsize=(5, 4.5))
ax.imshow(scores[first_context:-1, first_context:-1], cmap="viridis")
ax.set_xlabel("end token (context)")
ax.set_ylabel("start token (context)")
ax.set_title("p_start[s] * p_end[e], s <= e < s + 15")
fig.tight_layout()
fig.savefig(FIGURES / "05_qa_span_scores.png", dpi=100)

# %% [markdown]
# (The pipeline goes further: contexts longer than the model's window are cut into overlapping windows
# (`doc_stride`), `top_k` answers, the impossible answer; and by default, as HF, `align_to_words=True` widens
# the answer to whole words, here from `', and then flew'` to the word it starts in. See
# `erniem_np/pipelines/qa.py`.)
#
# ## UIE-M: extraction as "where does the answer to this prompt start and end?"
#
# UIE-M (PaddleNLP's universal information extraction on ERNIE-M) turns every extraction into the same
# question: given a prompt (a schema name such as `人物`, "person") and a text, which spans of the text answer
# it? Its head, `ErnieMForInformationExtraction`, has two Linear layers from each token's state to one number,
# `linear_start` and `linear_end`, each through a sigmoid: independent per-token probabilities, so a text may
# hold several answers, or none (`docs/reference.md#u1-uie-m-inputs-and-outputs`):
#
# $$p^{start}_{b,j} = \sigma\big(h_{b,j}\, w_{start}^\top + b_{start}\big), \qquad
# p^{end}_{b,j} = \sigma\big(h_{b,j}\, w_{end}^\top + b_{end}\big), \qquad \sigma(z) = \frac{1}{1 + e^{-z}}$$
#
# with $w_{start}$ = `linear_start.weight` $[1, H]$, $b_{start}$ = `linear_start.bias` $[1]$, and likewise
# `linear_end`. (HF's class returns the logits before the sigmoid, PaddleNLP's `UIEM` the probabilities; the
# package returns both, `start_logits` and `start_prob`.)
#
# We follow one text through `Extractor` step by step, on the small random UIE-M checkpoint of the test suite
# (`tests/fixtures/uie/tiny-uiem`, PaddleNLP layout); its answers are noise, but every step is the real one.
# UIE-M runs with the **paddle flavor** (chapter 3): Taskflow feeds the model only `input_ids` and
# `position_ids`, so `[CLS]` is masked and the padding is attended.

# %%
ie = Extractor(str(ROOT / "tests" / "fixtures" / "uie" / "tiny-uiem"), ["人物"], max_seq_len=32)
text = "张三出生于上海，任职于ABC公司。"
prompt = extract.dbc2sbc("人物")  # full-width characters to ASCII (a no-op here)
print(ie.model.config.flavor)

# %% [markdown]
# **Step 1: the input.** `[CLS] prompt [SEP] [SEP] text [SEP]`, padded with `[PAD]` to `max_seq_len`
# (QUIRK, as Taskflow: always to the full length, at position id 0; with the paddle mask the pads are
# attended, so their number changes the numbers).

# %%
input_ids, position_ids, offsets = ie._encode([prompt], [text])
print(ie.tokenizer.convert_ids_to_tokens(input_ids[0]))
print(position_ids[0])
assert len(input_ids[0]) == 32 and position_ids[0][-1] == 0

# %% [markdown]
# **Step 2: the model.** Start and end probabilities per token, $\sigma(h\, w^\top + b)$, re-derived from the last
# hidden states:

# %%
ids, pos = np.array(input_ids), np.array(position_ids)
out = ie.model(input_ids=ids, position_ids=pos, output_hidden_states=True)
sd = ie.model.state_dict()
last = out.hidden_states[-1][0]  # [L, H]
start_by_hand = 1 / (1 + np.exp(-(last @ sd["linear_start.weight"].T + sd["linear_start.bias"])[:, 0]))
end_by_hand = 1 / (1 + np.exp(-(last @ sd["linear_end.weight"].T + sd["linear_end.bias"])[:, 0]))
assert np.allclose(start_by_hand, out.start_prob[0], atol=1e-5) and np.allclose(end_by_hand, out.end_prob[0], atol=1e-5)

fig, ax = plt.subplots(figsize=(9, 3))
ax.plot(out.start_prob[0], "o-", label="start")
ax.plot(out.end_prob[0], "s-", label="end")
ax.axhline(0.5, color="gray", linestyle="--", label="threshold (position_prob)")
n_prompt = len(ie.tokenizer.tokenize(prompt))
n_text = len(ie.tokenizer.tokenize(text))
ax.axvspan(0.5, n_prompt + 0.5, color="tab:green", alpha=0.15, label="prompt")
ax.axvspan(n_prompt + 2.5, n_prompt + 2.5 + n_text, color="tab:orange", alpha=0.15, label="text")
ax.set_xlabel("token position ([CLS] prompt [SEP] [SEP] text [SEP] [PAD]...)")
ax.set_ylabel("probability")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(FIGURES / "05_uie_probabilities.png", dpi=100)

# %% [markdown]
# **Step 3: threshold, then pair starts with ends.** Every position whose probability is strictly above
# `position_prob` ($p > 0.5$) is a candidate start or end. Taskflow's `get_span` pairs them with two pointers;
# what it computes, said directly: each end takes the *nearest* start at or before it, among the starts after
# the previous end (QUIRK: the earlier starts in that stretch are dropped). Our direct version must give the
# same pairs:

# %%
start_ids = extract.get_bool_ids_greater_than(out.start_prob[0], 0.5)
end_ids = extract.get_bool_ids_greater_than(out.end_prob[0], 0.5)
spans = extract.get_span(start_ids, end_ids)


def pair_by_hand(starts: list[int], ends: list[int]) -> set[tuple[int, int]]:
    pairs, previous_end = set(), -1
    for e in sorted(ends):
        candidates = [s for s in starts if previous_end < s <= e]
        if candidates:
            pairs.add((max(candidates), e))
        previous_end = e
    return pairs


assert {(s[0], e[0]) for s, e in spans} == pair_by_hand([i for i, _ in start_ids], [i for i, _ in end_ids])
print(
    "starts", [i for i, _ in start_ids], "ends", [i for i, _ in end_ids], "->", sorted((s[0], e[0]) for s, e in spans)
)

# %% [markdown]
# **Step 4: spans back to characters.** The offsets of the prompt's tokens are shifted below zero, so a span
# inside the text has its own character offsets, and a span inside the prompt (negative ends) is a
# classification-style answer: the prompt's own words (how `情感倾向[正向,负向]` schemas answer). A span's
# probability is $p^{start}_{s} \cdot p^{end}_{e}$.

# %%
sentence_ids, probs = extract.get_id_and_prob(spans, [list(o) for o in offsets[0]])
by_hand = extract.convert_ids_to_results([{"text": text, "prompt": prompt}], [sentence_ids], [probs])[0]
print(by_hand)

# %% [markdown]
# The whole pipeline on the same text gives the same answers (it also splits long texts into chunks, runs
# nested schemas stage by stage, and joins the chunks' answers; the test suite checks all of it against
# PaddleNLP's Taskflow itself):

# %%
result = ie(text)[0]
print(result)
assert sorted(map(str, result.get("人物", []))) == sorted(map(str, by_hand))

# %% [markdown]
# ## Exercises
#
# 1. **Cross-entropy by hand.** The four texts above are English, Spanish, German and Chinese. Compute the
#    language-ID model's loss for those labels from the formula and check it against
#    `model(..., labels=...).loss`. What is the loss when every label is $-100$, in each flavor?
# 2. **An answer outside the input.** Give the QA model a gold start position of $L + 5$ (past the input) and a
#    valid end position. What loss does the `"hf"` flavor report, what does the `"paddle"` flavor report, and
#    why?
# 3. **UIE-M and its padding.** Pad the UIE-M input of step 1 to 48 tokens instead of 32 (more `[PAD]`, at
#    position id 0, as Taskflow pads). Do the start probabilities of the prompt and text tokens change? And with
#    an `attention_mask` that hides the pads (and `[CLS]`, as Paddle's implicit mask does)?

# %% [markdown]
# ### Answers
#
# (Spoilers: the next cell is collapsed in Jupyter; it asserts them.)

# %% jupyter={"source_hidden": true} tags=["answers"]
# 1. L = mean over kept labels of (log-sum-exp of the logits - the logit of the label).
label_ids = np.array([next(k for k, v in labels.items() if v == name) for name in ("en", "es", "de", "zh")])
enc = tok(texts, padding=True, return_tensors="np")
z = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits  # [B, N]
m = z.max(-1, keepdims=True)
log_z = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]  # [B]
by_formula = np.mean(log_z - z[np.arange(len(z)), label_ids])
loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=label_ids).loss
print(f"1. cross-entropy by the formula {by_formula:.6f}, the model's loss {loss:.6f}")
assert np.isclose(by_formula, loss, atol=1e-5)
ignored = np.full(len(texts), -100)
paddle_clf = ErnieMForSequenceClassification.from_pretrained(LANGID, flavor="paddle")
hf_loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=ignored).loss
paddle_loss = paddle_clf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=ignored).loss
print(f"   every label ignored: hf {hf_loss}, paddle {paddle_loss} (torch's mean of nothing, Paddle's 0)")
assert np.isnan(hf_loss) and paddle_loss == 0

# 2. The start position is clamped to L, which is the ignore index: the start side has no label left. Its mean
#    is NaN in torch (so the total is NaN) and 0 in Paddle (so the total is half the end side's loss).
ids_qa = np.array([qa_tok(question, context)["input_ids"]])  # [1, L]
L, end_gold = ids_qa.shape[1], int(e)  # e: the end of the best span found above
gold = {"start_positions": np.array([L + 5]), "end_positions": np.array([end_gold])}
hf_qa = qa_model(input_ids=ids_qa, attention_mask=np.ones_like(ids_qa), **gold)
paddle_qa_model = ErnieMForQuestionAnswering.from_pretrained(qa_dir, flavor="paddle")
paddle_qa = paddle_qa_model(input_ids=ids_qa, attention_mask=np.ones_like(ids_qa), **gold)
ze = paddle_qa.end_logits[0]
end_ce = np.log(np.exp(ze - ze.max()).sum()) + ze.max() - ze[end_gold]
print(f"2. start past the input: hf loss {hf_qa.loss}, paddle loss {paddle_qa.loss:.6f} "
      f"= CE(end) / 2 = {end_ce / 2:.6f}")  # fmt: skip
assert np.isnan(hf_qa.loss) and np.isclose(paddle_qa.loss, end_ce / 2, atol=1e-5)

# 3. Paddle's implicit mask attends the pads, so 16 more of them move every probability; hide them with a mask
#    and the extra pads change nothing.
pad = 48 - ids.shape[1]
ids48 = np.concatenate([ids, np.full((1, pad), ie.tokenizer.pad_token_id)], axis=1)
pos48 = np.concatenate([pos, np.zeros((1, pad), dtype=pos.dtype)], axis=1)
real = ids[0] != ie.tokenizer.pad_token_id  # [CLS] prompt [SEP] [SEP] text [SEP]
moved = np.abs(ie.model(input_ids=ids48, position_ids=pos48).start_prob[0, :32] - out.start_prob[0])[real].max()


def hiding_pads(i):
    return ((i != 0) & (i != ie.tokenizer.pad_token_id)).astype(np.int64)  # [CLS] and [PAD] hidden


p32 = ie.model(input_ids=ids, position_ids=pos, attention_mask=hiding_pads(ids)).start_prob[0]
p48 = ie.model(input_ids=ids48, position_ids=pos48, attention_mask=hiding_pads(ids48)).start_prob[0, :32]
still = np.abs(p48 - p32)[real].max()
print(f"3. 16 more pads move the real tokens' start probabilities by up to {moved:.1e} under Paddle's implicit "
      f"mask, by {still:.1e} with the pads hidden")  # fmt: skip
assert moved > 1e-4 and still < 1e-6
shutil.rmtree(workdir)
