"""Parity toolkit: golden bundles of every probe a port needs, and a comparator naming the first diverging one.

    from erniem_np.parity import BUNDLE_DIR, load_bundle, compare_bundles
    report = compare_bundles(BUNDLE_DIR / "tiny.hf.safetensors", "my-port.candidate.safetensors")

docs/parity-testing.md is the contract; ``schema`` the probe catalogue and profiles, ``bundle`` the file
format, ``produce`` this implementation as a producer, ``compare`` the comparator.
"""

from .bundle import Bundle, BundleError, load_bundle, validate, write_bundle
from .compare import Report, assert_bundles_close, compare_bundles
from .produce import BUNDLE_DIR, layer_local_probes, make_bundle
from .schema import PROFILES

__all__ = ["BUNDLE_DIR", "PROFILES", "Bundle", "BundleError", "Report", "assert_bundles_close", "compare_bundles",
           "layer_local_probes", "load_bundle", "make_bundle", "validate", "write_bundle"]  # fmt: skip
