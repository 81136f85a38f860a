"""Shared pytest set-up.

bpy 4.5 + torch (+ the glTF exporter) can deadlock in a destructor at interpreter exit,
so the session ends with os._exit once pytest has reported (see shared ENVIRONMENT notes).
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_unconfigure(config):
    sys.stdout.flush()
    sys.stderr.flush()
    status = getattr(config, "_faceforge_exitstatus", None)
    if status is not None:
        os._exit(int(status))


def pytest_sessionfinish(session, exitstatus):
    session.config._faceforge_exitstatus = exitstatus


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
