"""Parity bundles: one safetensors file of input cases and the probes a model computed for them.

Layout (format ``erniem-np-parity/1``; docs/parity-testing.md is the contract a port follows,
docs/parity-bundles.md the full specification):

* tensors ``<case>/<probe>``: ``input.input_ids``, ``input.attention_mask``, ``input.position_ids`` (int64
  [B, L]; positions 0-based, before ErnieM's +2), ``derived.additive_mask`` ([B, 1, 1, L], the mask this
  bundle's model added to the scores), then the probes of schema.probe_catalogue; ``weights/<name>`` holds
  the model's weights in small bundles (HF state-dict names, ``[out, in]``; head weights as
  ``<head>.<param>``, as erniem_np.testing.random_weights names them);
* metadata (all values strings; structured ones JSON): ``format``, ``role`` (reference, candidate, inputs),
  ``config`` (the full config dict), ``flavor``, ``producer`` (library, versions, backend), ``compute_dtype``,
  ``cases`` ([{name, description, batch, seq_len}]), ``probes`` ([{name, tier, kind, shape}] in forward
  order), ``heads`` ({short name: {num_labels}}), ``tier``, ``tolerances`` ({"profiles": ...}), ``weights``
  ({stored, recipe, seed, digest}).

A call case records one forward call as its caller made it: its ``cases`` entry adds ``head`` (the class
called: "base" or a head's short name), ``inputs`` (the tensor arguments passed, by HF name, each stored as
``input.<name>``; ``past_key_values`` as ``input.past.NN.k`` / ``.v``), ``kwargs`` (the other arguments) and
``probes`` (the probe names the case holds). Tensors under a prefix that is neither a case nor ``weights``
(``paddle_state/`` in the Paddle goldens) are carried along and never compared.

A candidate from another port needs only the tensors (every core probe of every case); its metadata is
optional. Reading validates the file and raises BundleError with ``kind`` "unreadable" (not a bundle, a
truncated or malformed file) or "structural" (a missing input or probe, a wrong shape).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..checkpoints.errors import CheckpointError
from ..checkpoints.safetensors_file import read_safetensors, write_safetensors
from . import schema

JSON_KEYS = ("config", "producer", "cases", "probes", "heads", "tolerances", "weights")


class BundleError(ValueError):
    """A bundle that cannot be used. ``kind``: "unreadable" (exit code 3) or "structural" (exit code 2)."""

    def __init__(self, message: str, kind: str = "structural"):
        super().__init__(message)
        self.kind = kind


@dataclass
class Bundle:
    """A parity bundle in memory: metadata (JSON values decoded) and tensors (arrays or lazy StoredTensors)."""

    metadata: dict
    tensors: Mapping = field(repr=False)
    path: str | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.path else "<in memory>"

    def array(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        return t.array() if hasattr(t, "array") else np.asarray(t)

    def get(self, case: str, probe: str) -> np.ndarray | None:
        key = f"{case}/{probe}"
        return self.array(key) if key in self.tensors else None

    def has(self, case: str, probe: str) -> bool:
        return f"{case}/{probe}" in self.tensors

    def case_names(self) -> list[str]:
        """Cases in metadata order, else every ``<case>/`` prefix found among the tensors (candidates)."""
        if self.metadata.get("cases"):
            return [c["name"] for c in self.metadata["cases"]]
        seen = []
        for key in self.tensors:
            case = key.split("/", 1)[0]
            if "/" in key and case != "weights" and case not in seen:
                seen.append(case)
        return seen

    def case(self, name: str) -> dict:
        for c in self.metadata.get("cases") or []:
            if c["name"] == name:
                return c
        return {"name": name}

    def probes(self) -> list[dict]:
        return list(self.metadata.get("probes") or [])

    def is_call(self, case: str) -> bool:
        """Whether ``case`` is a call case (its metadata lists the forward arguments it recorded)."""
        return "inputs" in self.case(case)

    def case_probes(self, case: str) -> list[dict]:
        """The probes of one case in forward order: the case's own ``probes`` list, else every probe."""
        names = self.case(case).get("probes")
        probes = self.probes()
        return probes if names is None else [p for p in probes if p["name"] in set(names)]

    def input_names(self, case: str) -> list[str]:
        """The input tensors of one case, without the ``<case>/`` prefix."""
        if not self.is_call(case):
            return list(schema.INPUTS)
        names = []
        for arg in self.case(case)["inputs"]:
            if arg == "past_key_values":
                layers = int(self.metadata["config"]["num_hidden_layers"])
                names += [f"input.past.{i:02d}.{kv}" for i in range(layers) for kv in "kv"]
            else:
                names.append(f"input.{arg}")
        return names

    def inputs(self, case: str) -> dict:
        """The forward arguments of a case by their HF names: input_ids, attention_mask, position_ids, and for a
        call case every argument it recorded (``past_key_values`` as a tuple of (key, value) pairs)."""
        out: dict = {}
        args = self.case(case)["inputs"] if self.is_call(case) else ("input_ids", "attention_mask", "position_ids")
        for name in args:
            if name == "past_key_values":
                layers = int(self.metadata["config"]["num_hidden_layers"])
                out[name] = tuple(tuple(self._input(case, f"input.past.{i:02d}.{kv}") for kv in "kv")
                                  for i in range(layers))  # fmt: skip
            else:
                out[name] = self._input(case, f"input.{name}")
        return out

    def _input(self, case: str, name: str) -> np.ndarray:
        a = self.get(case, name)
        if a is None:
            raise BundleError(f"{self.name}: case {case!r} has no {name}")
        return a

    def weights(self) -> dict[str, np.ndarray]:
        return {k[len("weights/") :]: self.array(k) for k in self.tensors if k.startswith("weights/")}

    def config(self):
        from ..config import ErnieMConfig

        if "config" not in self.metadata:
            raise BundleError(f"{self.name}: no config in the metadata (a candidate file, not a reference?)")
        return ErnieMConfig.from_dict(dict(self.metadata["config"]), flavor=self.metadata.get("flavor"))


def encode_metadata(meta: Mapping) -> dict[str, str]:
    return {k: (v if isinstance(v, str) else json.dumps(v, sort_keys=True)) for k, v in meta.items()}


def write_bundle(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping) -> None:
    """Write a bundle (metadata values that are not strings are stored as JSON). Atomic: a reader never sees
    half a file."""
    for name in tensors:
        if "/" not in name:
            raise ValueError(f"tensor name {name!r} is not <case>/<probe> or weights/<name>")
    meta = {"format": schema.FORMAT, **metadata}
    write_safetensors(path, tensors, metadata=encode_metadata(meta))


def load_bundle(path: str) -> Bundle:
    """Read and check a bundle file; tensors stay memory-mapped until used.

    Raises BundleError(kind="unreadable") for a missing, truncated or malformed file or metadata that is not
    JSON where JSON is expected, and BundleError(kind="structural") for shapes that contradict the metadata.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BundleError(f"{path}: no such file", "unreadable")
    if os.path.isdir(path):
        raise BundleError(f"{path}: is a directory, not a .safetensors bundle", "unreadable")
    try:
        tensors, raw = read_safetensors(path)
    except CheckpointError as e:
        raise BundleError(str(e), "unreadable") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e}", "unreadable") from None
    meta: dict = dict(raw)
    for key in JSON_KEYS:
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError as e:
                raise BundleError(f"{path}: metadata {key!r} is not JSON ({e.msg})", "unreadable") from None
    fmt = meta.get("format")
    if fmt is not None and fmt != schema.FORMAT:
        raise BundleError(f"{path}: format {fmt!r}, expected {schema.FORMAT!r} (a newer bundle?)",
                          "unreadable")  # fmt: skip
    for key in tensors:
        if "/" not in key:
            raise BundleError(f"{path}: tensor {key!r} is not named <case>/<probe>", "structural")
    return Bundle(meta, tensors, path)


def as_bundle(obj) -> Bundle:
    """A Bundle from a Bundle, a path, or a plain ``{"<case>/<probe>": array}`` dict (a candidate in memory)."""
    if isinstance(obj, Bundle):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_bundle(obj)
    if isinstance(obj, Mapping):
        return Bundle({}, dict(obj), None)
    raise TypeError(f"expected a Bundle, a path or a dict of arrays, got {type(obj).__name__}")


# --------------------------------------------------------------------------------------------- validation
def case_dims(bundle: Bundle, case: str) -> dict:
    """The symbols of schema shapes for one case of a reference bundle."""
    cfg = bundle.metadata["config"]
    ids = bundle.tensors.get(f"{case}/input.input_ids")
    if ids is None:
        raise BundleError(f"{bundle.name}: case {case!r} has no input.input_ids")
    B, L = tuple(ids.shape)
    H, nh = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    return {"B": B, "L": L, "H": H, "nh": nh, "d": H // nh, "F": int(cfg["intermediate_size"])}


def validate(bundle: Bundle, against: Bundle | None = None) -> list[str]:
    """Structural problems of a bundle, as messages (empty: valid).

    A reference (no ``against``) must carry the metadata, every case's inputs and every probe its metadata
    lists at its tier, each of the shape the schema gives (a call case: the inputs and probes its entry lists,
    of any shape). A candidate (``against`` = the reference) must hold every core probe of every reference
    case, with the reference's shapes; debug probes are optional.
    """
    problems: list[str] = []
    ref = against or bundle
    if against is None:
        for key in ("config", "cases", "probes"):
            if key not in bundle.metadata:
                problems.append(f"metadata has no {key!r}: not a reference bundle (a candidate? check it with "
                                "--against REF / validate(candidate, against=reference))")  # fmt: skip
        if problems:
            return problems
    heads = ref.metadata.get("heads") or {}
    for case in ref.case_names():
        dims = None
        if ref.is_call(case):  # shapes follow the call's arguments (a cache, 3-D choices): not the schema's
            unknown = [a for a in ref.case(case)["inputs"] if a not in schema.CALL_INPUTS]
            if unknown:
                problems.append(f"{case}: unknown forward argument(s) {', '.join(map(str, unknown))}")
                continue
        else:
            try:
                dims = case_dims(ref, case)
            except BundleError as e:
                problems.append(str(e))
                continue
        if against is None:
            for name in ref.input_names(case):
                if not bundle.has(case, name):
                    problems.append(f"{case}/{name}: missing input")
            if bundle.metadata.get("role") == "inputs":
                continue  # an inputs-only bundle (export-inputs) carries no probes
        for p in ref.case_probes(case):
            key = f"{case}/{p['name']}"
            present = key in bundle.tensors
            required = p["tier"] == "core" or (against is None and p["tier"] == "debug"
                                               and ref.metadata.get("tier") == "debug")  # fmt: skip
            if not present:
                if required:
                    problems.append(f"{key}: missing {p['tier']} probe")
                continue
            got = tuple(bundle.tensors[key].shape)
            if dims is None:
                known = key in ref.tensors
                want, shown = (tuple(ref.tensors[key].shape), "as in the reference") if known else (got, "")
            else:
                dims_p = dict(dims)
                if p["name"].startswith("head."):
                    dims_p["N"] = int(heads.get(p["name"].split(".")[1], {}).get("num_labels", 0))
                want, shown = schema.expected_shape(p["shape"], dims_p), p["shape"]
            if got != want:
                problems.append(f"{key}: shape {list(got)}, expected {list(want)} {shown}")
    if against is not None:
        known = {f"{c}/{p['name']}" for c in ref.case_names() for p in ref.case_probes(c)}
        known |= {f"{c}/{n}" for c in ref.case_names() for n in ref.input_names(c)}
        extra = [k for k in bundle.tensors if k not in known and not k.startswith("weights/")]
        cases = set(ref.case_names())
        unknown_cases = sorted({k.split("/", 1)[0] for k in extra} - cases)
        if unknown_cases:
            problems.append(f"cases not in the reference: {', '.join(unknown_cases)}")
    return problems


def check(bundle: Bundle, against: Bundle | None = None) -> None:
    """Raise BundleError (structural) naming the first problems found by validate()."""
    problems = validate(bundle, against)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise BundleError(f"{bundle.name}: " + "; ".join(problems[:5]) + more, "structural")


def inputs_only(bundle: Bundle) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors and metadata of an inputs-only bundle (what a port needs to produce a candidate)."""
    tensors = {f"{c}/{n}": bundle.array(f"{c}/{n}") for c in bundle.case_names() for n in bundle.input_names(c)
               if bundle.has(c, n)}  # fmt: skip
    tensors.update({k: bundle.array(k) for k in bundle.tensors if k.startswith("weights/")})
    meta = {k: v for k, v in bundle.metadata.items() if k != "format"}
    meta["role"] = "inputs"
    return tensors, meta
