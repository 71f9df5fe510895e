import os
import sys

import pytest

import numerics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
if numerics.varied():  # before any test starts JAX's CPU backend
    numerics.vary_this_process()
DATA = os.path.join(REPO, "tests", "data")
SHARED = os.path.join(os.path.dirname(REPO), "shared")
FIXTURES = os.path.join(SHARED, "fixtures")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run full-size (1024², config-f) tests")


def pytest_report_header(config):
    return numerics.describe()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size test, opt-in with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="full-size test; run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fixtures_dir():
    if not os.path.isdir(FIXTURES):
        pytest.skip("../shared/fixtures is absent")
    return FIXTURES
