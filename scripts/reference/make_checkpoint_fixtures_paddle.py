import aiohttp, datasets  # noqa: E401,F401  -- must come before paddle (paddle 2.6.2's zlib breaks aiohttp)

# Write the Paddle checkpoint fixtures: tests/fixtures/checkpoints/paddle-*/ with PaddleNLP's own save functions.
#
# Run from the repository root inside the Paddle reference environment:
#
#     .venv-ref-paddle/bin/python scripts/reference/make_checkpoint_fixtures_paddle.py
#
# The weights are erniem_np.testing.random_weights (HF names, [out, in]) renamed and transposed to Paddle's
# layout by paddle_layout.py beside this script (independently of the package's name map), with the FFN Paddle
# builds (4 * hidden). Each model is saved with PaddleNLP's ``save_pretrained`` (config.json + model_state.pdparams),
# loaded back with ``from_pretrained`` and run on fixed inputs; the outputs go to reference_outputs.safetensors.
#
#     paddle-{base,seq_cls,token_cls,qa,mc,uiem}   save_pretrained of ErnieMModel, the four heads, UIEM
#     paddle-bare                                  paddle.save(ErnieMModel.state_dict(), "ernie_m_tiny.pdparams")
#                                                  and the same with protocol=2; no config (the test passes one)
#     paddle-tuple                                 paddle.framework.io._pickle_save, the path paddle.save takes
#                                                  for objects that are not plain state dicts: each tensor is
#                                                  pickled as builtins.tuple((name, ndarray))
#     paddle-uiem-legacy                           the old Taskflow UIEM layout: encoder.* keys (paddle.save) and a
#                                                  legacy model_config.json ({"init_args": [...], "init_class"})
#     paddle-qa-float16, paddle-seq_cls-bfloat16   save_pretrained after model.to(dtype=...); the outputs are
#                                                  the float32 model's with the rounded weights

import json

import numpy as np
import paddle
import paddlenlp
from make_checkpoint_fixtures_common import (
    CONFIG,
    HEAD_LABELS,
    NUM_CHOICES,
    cases,
    fresh_dir,
    split_head,
    write_fixture,
)
from paddle.framework import io as paddle_io
from paddle_layout import NO_HF_POOLER
from paddle_layout import paddle_state as to_paddle
from paddlenlp.transformers import (
    UIEM,
    ErnieMConfig,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)

CLASSES = {
    "base": ErnieMModel, "seq_cls": ErnieMForSequenceClassification, "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering, "mc": ErnieMForMultipleChoice, "ie": UIEM,
}  # fmt: skip
OUTPUTS = {
    "base": ("last_hidden_state", "pooler_output"), "seq_cls": ("logits",), "token_cls": ("logits",),
    "qa": ("start_logits", "end_logits"), "mc": ("logits",), "ie": ("start_prob", "end_prob"),
}  # fmt: skip
FFN = 4 * CONFIG["hidden_size"]  # Paddle's FFN width, whatever intermediate_size says


def paddle_state(head: str) -> dict[str, np.ndarray]:
    """HF-layout recipe weights -> the Paddle class's state dict (names, [in, out] Linear weights)."""
    hf_head = None if head == "base" else head
    pooler = split_head(None, ffn_size=FFN) if hf_head in NO_HF_POOLER else None  # Paddle keeps it, HF does not
    return to_paddle(split_head(hf_head, ffn_size=FFN), hf_head, pooler_from=pooler)


def build(head: str, state=None):
    kw = dict(CONFIG)
    if head != "base":
        kw["num_labels"] = HEAD_LABELS[head]
    if head == "mc":
        kw["num_choices"] = NUM_CHOICES  # Paddle reshapes the logits with config.num_choices
    paddle.seed(0)
    model = CLASSES[head](ErnieMConfig(**kw))
    model.eval()
    state = paddle_state(head) if state is None else state
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert have == {k: v.shape for k, v in state.items()}, (sorted(set(have) ^ set(state)), head)
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    for k, v in model.state_dict().items():
        assert np.array_equal(v.numpy().astype(np.float32), state[k]), k
    return model


def run(model, head: str) -> list[dict]:
    results = []
    for case in cases(head):
        args = {k: paddle.to_tensor(v) for k, v in case["inputs"].items()}
        with paddle.no_grad():
            out = model(**args) if head == "ie" else model(**args, return_dict=True)
        if head == "ie":
            out = dict(zip(OUTPUTS["ie"], out))
        values = {n: (out[n] if head == "ie" else getattr(out, n)).numpy() for n in OUTPUTS[head]}
        results.append({**case, "outputs": values})
    return results


def fixture(d, head, saved_by, results, load=None):
    write_fixture(d, reference="paddle", library="paddlenlp", library_version=paddlenlp.__version__,
                  framework="paddle", framework_version=paddle.__version__, head=head, flavor="paddle",
                  saved_by=saved_by, results=results, load=load)  # fmt: skip
    print(f"{d.name}: {sorted(p.name for p in d.iterdir())}")


def saved_pretrained(head: str, name: str) -> None:
    d = fresh_dir(name)
    build(head).save_pretrained(str(d))
    reloaded = CLASSES[head].from_pretrained(str(d))  # the reference reads its own save
    reloaded.eval()
    fixture(d, head, f"{CLASSES[head].__name__}.save_pretrained(d)", run(reloaded, head))


def low_precision(head: str, dtype: str) -> None:
    d = fresh_dir(f"paddle-{head}-{dtype}")
    model = build(head)
    model.to(dtype=dtype)
    model.save_pretrained(str(d))
    # what a float32 model computes with the rounded weights (Paddle's CPU kernels lack fp16/bf16 for some ops)
    rounded = {k: v.astype("float32").numpy() for k, v in model.state_dict().items()}
    fixture(d, head, f"model.to(dtype='{dtype}'); {CLASSES[head].__name__}.save_pretrained(d)",
            run(build(head, rounded), head))  # fmt: skip


def bare() -> None:
    d = fresh_dir("paddle-bare")
    model = build("base")
    paddle.save(model.state_dict(), str(d / "ernie_m_tiny.pdparams"))
    paddle.save(model.state_dict(), str(d / "ernie_m_tiny_protocol2.pdparams"), protocol=2)
    config = dict(CONFIG, intermediate_size=FFN)
    fixture(d, "base", 'paddle.save(ErnieMModel.state_dict(), "ernie_m_tiny.pdparams") and protocol=2',
            run(model, "base"), load={"config": config,
                                      "files": ["ernie_m_tiny.pdparams", "ernie_m_tiny_protocol2.pdparams"]})


def tuple_form() -> None:
    d = fresh_dir("paddle-tuple")
    model = build("token_cls")
    model.config.save_pretrained(str(d))
    with open(d / "model_state.pdparams", "wb") as f:
        paddle_io._pickle_save(model.state_dict(), f, protocol=4)
    fixture(d, "token_cls", "paddle.framework.io._pickle_save(state_dict, f, protocol=4)", run(model, "token_cls"))


def legacy_uiem() -> None:
    d = fresh_dir("paddle-uiem-legacy")
    state = paddle_state("ie")
    model = build("ie", state)
    legacy = {("encoder." + k[len("ernie_m.") :] if k.startswith("ernie_m.") else k): paddle.to_tensor(v)
              for k, v in state.items()}  # fmt: skip
    paddle.save(legacy, str(d / "model_state.pdparams"))
    base_args = dict(CONFIG, init_class="ErnieMModel")
    with open(d / "model_config.json", "w") as f:
        json.dump({"init_args": [base_args], "init_class": "UIEM"}, f, indent=2)
    fixture(d, "ie", "paddle.save of UIEM's state dict renamed ernie_m.* -> encoder.* (the old Taskflow "
            "layout), legacy model_config.json", run(model, "ie"))  # fmt: skip


def main() -> None:
    for head in ("base", "seq_cls", "token_cls", "qa", "mc"):
        saved_pretrained(head, f"paddle-{head}")
    saved_pretrained("ie", "paddle-uiem")
    bare()
    tuple_form()
    legacy_uiem()
    low_precision("qa", "float16")
    low_precision("seq_cls", "bfloat16")


if __name__ == "__main__":
    main()
