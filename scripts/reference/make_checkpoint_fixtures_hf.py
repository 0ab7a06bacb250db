"""Write the HF checkpoint fixtures: tests/fixtures/checkpoints/hf-*/ with transformers' own save functions.

Run from the repository root inside the HF reference environment:

    .venv-ref-hf/bin/python scripts/reference/make_checkpoint_fixtures_hf.py

For each model class (ErnieMModel and the five heads) the weights of erniem_np.testing.random_weights are
loaded (strict) into transformers' class, saved with ``save_pretrained`` (safetensors, the default, and
``safe_serialization=False`` for pytorch_model.bin), loaded back with ``from_pretrained`` and run on fixed
inputs; the outputs go to ``reference_outputs.safetensors`` beside the files. Also, for every class: sharded
saves (``max_shard_size="20KB"``) in both formats; and a float16 safetensors save, a bfloat16 .bin save (outputs from
the float32 model transformers loads from them), and a legacy-format ``torch.save`` (non-zip).
"""

from __future__ import annotations

import json

import numpy as np
import torch
import transformers
from make_checkpoint_fixtures_common import (
    CONFIG,
    FIXTURE_DIR,
    HEAD_LABELS,
    HEADS,
    cases,
    fresh_dir,
    split_head,
    write_fixture,
)
from transformers import (
    ErnieMConfig,
    ErnieMForInformationExtraction,
    ErnieMForMultipleChoice,
    ErnieMForQuestionAnswering,
    ErnieMForSequenceClassification,
    ErnieMForTokenClassification,
    ErnieMModel,
)

CLASSES = {
    "base": ErnieMModel, "seq_cls": ErnieMForSequenceClassification, "token_cls": ErnieMForTokenClassification,
    "qa": ErnieMForQuestionAnswering, "mc": ErnieMForMultipleChoice, "ie": ErnieMForInformationExtraction,
}  # fmt: skip
OUTPUTS = {
    "base": ("last_hidden_state", "pooler_output"), "seq_cls": ("logits",), "token_cls": ("logits",),
    "qa": ("start_logits", "end_logits"), "mc": ("logits",), "ie": ("start_logits", "end_logits"),
}  # fmt: skip


def build(head: str):
    cfg = ErnieMConfig(**CONFIG, num_labels=HEAD_LABELS.get(head, 2))
    model = CLASSES[head](cfg).eval()
    sd = split_head(None if head == "base" else head)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=True)
    return model


def run(model, head: str) -> list[dict]:
    model = model.float().eval()
    results = []
    for case in cases(head):
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v.copy()) for k, v in case["inputs"].items()})
        results.append({**case, "outputs": {n: getattr(out, n).numpy() for n in OUTPUTS[head]}})
    return results


def save(name: str, head: str, saved_by: str, save_fn, reload_kwargs=None) -> None:
    d = fresh_dir(name)
    model = build(head)
    save_fn(model, d)
    reloaded = CLASSES[head].from_pretrained(d, **(reload_kwargs or {}))  # the reference reads its own save
    write_fixture(d, reference="hf", library="transformers", library_version=transformers.__version__,
                  framework="torch", framework_version=torch.__version__, head=head, flavor="hf",
                  saved_by=saved_by, results=run(reloaded, head))  # fmt: skip
    print(f"{name}: {sorted(p.name for p in d.iterdir())}")


def legacy(name: str, head: str) -> None:
    d = fresh_dir(name)
    model = build(head)
    model.config.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    write_fixture(d, reference="hf", library="transformers", library_version=transformers.__version__,
                  framework="torch", framework_version=torch.__version__, head=head, flavor="hf",
                  saved_by="torch.save(model.state_dict(), _use_new_zipfile_serialization=False)",
                  results=run(model, head))  # fmt: skip
    print(f"{name}: {sorted(p.name for p in d.iterdir())}")


def main() -> None:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    for head in HEADS:
        save(f"hf-{head}-safetensors", head, "save_pretrained(d)", lambda m, d: m.save_pretrained(d))
        save(f"hf-{head}-bin", head, "save_pretrained(d, safe_serialization=False)",
             lambda m, d: m.save_pretrained(d, safe_serialization=False))  # fmt: skip
        save(f"hf-{head}-sharded-safetensors", head, 'save_pretrained(d, max_shard_size="20KB")',
             lambda m, d: m.save_pretrained(d, max_shard_size="20KB"))  # fmt: skip
        save(f"hf-{head}-sharded-bin", head, 'save_pretrained(d, max_shard_size="20KB", safe_serialization=False)',
             lambda m, d: m.save_pretrained(d, max_shard_size="20KB", safe_serialization=False))  # fmt: skip
    save("hf-mc-float16-safetensors", "mc", "model.half().save_pretrained(d)",
         lambda m, d: m.half().save_pretrained(d), {"torch_dtype": torch.float32})  # fmt: skip
    save("hf-ie-bfloat16-bin", "ie", "model.to(torch.bfloat16).save_pretrained(d, safe_serialization=False)",
         lambda m, d: m.to(torch.bfloat16).save_pretrained(d, safe_serialization=False),
         {"torch_dtype": torch.float32})  # fmt: skip
    legacy("hf-base-legacy-bin", "base")
    for d in sorted(p for p in FIXTURE_DIR.iterdir() if p.name.startswith("hf-")):
        assert json.loads((d / "config.json").read_text())["model_type"] == "ernie_m", d


if __name__ == "__main__":
    main()
