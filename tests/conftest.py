"""Test-suite settings and shared fixtures. In CI (CI=true) hypothesis runs derandomised, so a run is
reproducible and cannot fail on a draw no one can replay; locally it explores fresh examples on every run.

Fixtures for the Dask tests (tests/dask_cases.py says what runs on them): ``dask_cluster``, a local cluster of
two single-threaded worker processes, each under a nanny that starts a new one when it dies (one per test
module); ``task_ckpts``, the random checkpoints of the tasks (built once per session)."""

import os
import sys

import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))  # tests/goldens.py is imported by several test files

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:  # fmt: skip
        yield c


@pytest.fixture(scope="session")
def task_ckpts(tmp_path_factory):
    from dask_cases import task_checkpoints

    return task_checkpoints(tmp_path_factory.mktemp("dask-tasks"))
