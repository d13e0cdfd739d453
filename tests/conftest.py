"""Every test gets its own warm-start cache directory, so no test reads another's cached SFT model (or the
user's) and the suite leaves nothing under ~/.cache. Subprocesses inherit it through the environment."""

import pytest


@pytest.fixture(autouse=True)
def _own_warm_start_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PPP_MIN_CACHE", str(tmp_path_factory.mktemp("ppp_min_cache")))
