from __future__ import annotations

import pytest

from tests.integration import stack


@pytest.fixture(scope="session")
def embedded_site(tmp_path_factory):
    with stack.embedded_stack(tmp_path_factory.mktemp("embedded")) as site:
        yield site


@pytest.fixture(scope="session")
def topology_site(tmp_path_factory):
    with stack.topology_stack(tmp_path_factory.mktemp("topology")) as site:
        yield site
