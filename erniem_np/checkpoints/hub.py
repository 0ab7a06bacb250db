"""Hugging Face hub ids: found in the local hub cache, downloaded only on request, explained when offline.

The cache layout is huggingface_hub's: ``<cache>/models--<org>--<name>/refs/<branch>`` holds a commit hash and
``snapshots/<commit>/`` the files. ``<cache>`` is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``. Nothing here touches the network unless
``download=True`` is passed and ``huggingface_hub`` is installed; the package never imports it otherwise.
"""

from __future__ import annotations

import os
import re

from .errors import CheckpointError

CONFIG_FILES = ("config.json", "model_config.json")
TOKENIZER_FILES = ("sentencepiece.bpe.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")  # fmt: skip
# Weight files in order of preference (a repository may hold several formats; safetensors maps fastest).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "model_state.pdparams")  # fmt: skip

# PaddleNLP short names are not hub ids; say where their files live (docs/reference.md#w4-checkpoint-directories).
PADDLE_NAMES = {
    "ernie-m-base": "https://paddlenlp.bj.bcebos.com/models/transformers/ernie_m/ernie_m_base.pdparams",
    "ernie-m-large": "https://paddlenlp.bj.bcebos.com/models/transformers/ernie_m/ernie_m_large.pdparams",
    "uie-m-base": "https://bj.bcebos.com/paddlenlp/taskflow/information_extraction/uie_m_base_v1.1/"
                  "model_state.pdparams",
    "uie-m-large": "https://bj.bcebos.com/paddlenlp/taskflow/information_extraction/uie_m_large_v1.1/"
                   "model_state.pdparams",
}  # fmt: skip
PADDLE_TOKENIZER_URLS = ("https://paddlenlp.bj.bcebos.com/models/transformers/ernie_m/ernie_m.vocab.txt",
                         "https://paddlenlp.bj.bcebos.com/models/transformers/ernie_m/ernie_m.sentencepiece.bpe.model")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.environ["HUGGINGFACE_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name``, not an absolute or explicitly relative path."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith((".json", ".bin", ".pdparams",
                                                                                  ".safetensors"))  # fmt: skip


def repo_folder(repo_id: str, cache_dir: str | None = None) -> str:
    return os.path.join(hub_cache_dir(cache_dir), "models--" + repo_id.replace("/", "--"))


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> str | None:
    """The snapshot directory of ``repo_id`` at ``revision`` (branch, tag or commit) in the cache, or None."""
    folder = repo_folder(repo_id, cache_dir)
    snapshots = os.path.join(folder, "snapshots")
    if not os.path.isdir(snapshots):
        return None
    rev = revision or "main"
    ref = os.path.join(folder, "refs", rev)
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as f:
            rev = f.read().strip()
    if os.path.isdir(os.path.join(snapshots, rev)):
        return os.path.join(snapshots, rev)
    present = sorted(os.listdir(snapshots))
    if revision is None and len(present) == 1:
        return os.path.join(snapshots, present[0])
    return None


def is_complete(directory: str) -> bool:
    names = set(os.listdir(directory))
    return bool(names & set(CONFIG_FILES)) and bool(names & set(WEIGHT_FILES))


def offline_help(repo_id: str, cache_dir: str | None = None, reason: str = "") -> str:
    folder = repo_folder(repo_id, cache_dir)
    why = f", and {reason}" if reason else " and is not in the Hugging Face cache"
    lines = [
        f"{repo_id!r} is not a local directory{why} ({hub_cache_dir(cache_dir)}).",
        "To use it without a network connection, fetch these files of the model:",
        "  config.json (or Paddle's model_config.json)",
        ("  one weights file: model.safetensors (or the model-*-of-*.safetensors shards and "
         "model.safetensors.index.json), or pytorch_model.bin (or its shards and pytorch_model.bin.index.json), "
         "or model_state.pdparams"),
        "  the tokenizer: " + ", ".join(TOKENIZER_FILES[:4]),
    ]
    if repo_id in PADDLE_NAMES:
        lines.append(f"  ({repo_id} is a PaddleNLP name: its weights are {PADDLE_NAMES[repo_id]}, its tokenizer "
                     + " and ".join(PADDLE_TOKENIZER_URLS) + f"; on the hub, try PaddlePaddle/{repo_id})")
    else:
        lines.append(f"  from https://huggingface.co/{repo_id}/tree/main")
    lines += [
        ("and either pass the directory holding them, or put them in the cache layout "
         f"{folder}/snapshots/<any name>/ (with refs/main naming that snapshot, or as its only snapshot)."),
        ("Or download them: from_pretrained(name, download=True) / `erniem-np convert --download`, which needs "
         "`pip install huggingface_hub`."),
    ]
    return "\n".join(lines)


def download_snapshot(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """Fetch config, one weights format and the tokenizer files of ``repo_id`` with huggingface_hub."""
    try:
        import huggingface_hub
    except ImportError:
        raise FileNotFoundError(offline_help(repo_id, cache_dir, "huggingface_hub is not installed to download "
                                             "it")) from None  # fmt: skip
    files = huggingface_hub.list_repo_files(repo_id, revision=revision)
    weights = next((w for w in WEIGHT_FILES if w in files), None)
    if weights is None:
        raise CheckpointError(f"the hub repository {repo_id} holds no ErnieM weights file "
                              f"({', '.join(WEIGHT_FILES)}); it has: {', '.join(sorted(files))}")  # fmt: skip
    allow = [f for f in files if f in CONFIG_FILES or f in TOKENIZER_FILES or f == weights]
    if weights.endswith(".index.json"):  # the shards: model-00001-of-00003.safetensors, pytorch_model-*.bin
        stem, ext = ("model-", ".safetensors") if weights.startswith("model.") else ("pytorch_model-", ".bin")
        allow += [f for f in files if f.startswith(stem) and f.endswith(ext) and "-of-" in f]
    return huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow)


def resolve(path_or_name: str | os.PathLike, download: bool = False, revision: str | None = None,
            cache_dir: str | None = None) -> tuple[str, str | None]:  # fmt: skip
    """``(local path, hub id or None)`` for a directory, a file, a cached hub snapshot, or a download."""
    path = os.fspath(path_or_name)
    if os.path.exists(path):
        return path, None
    if not looks_like_hub_id(path):
        raise FileNotFoundError(f"{path} is not a directory or file (expected a checkpoint directory holding "
                                "config.json + model.safetensors, or a hub id such as org/name)")  # fmt: skip
    snapshot = cached_snapshot(path, revision, cache_dir)
    if snapshot is not None and is_complete(snapshot):
        return snapshot, path
    if download:
        return download_snapshot(path, revision, cache_dir), path
    reason = ""
    if snapshot is not None:
        reason = f"its cached snapshot {snapshot} is incomplete (has: {', '.join(sorted(os.listdir(snapshot)))})"
    raise FileNotFoundError(offline_help(path, cache_dir, reason))
