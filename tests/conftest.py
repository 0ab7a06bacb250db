"""Test-suite settings. In CI (CI=true) hypothesis runs derandomised, so a run is reproducible and cannot fail
on a draw no one can replay; locally it explores fresh examples on every run."""

import os
import sys

from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/goldens.py is imported by several test files

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))
