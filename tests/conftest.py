"""Shared fixtures for QuickSAM's tests (pytest + pytest-qgis, real QGIS, offscreen).

Sections:
  1. Environment: settings that must be in place before QGIS starts.
  2. Plugin: the real plugin loaded through the package's `classFactory`.

The user cache and config folders point at one temporary folder per session (set at import, so that
encoder processes started by tests inherit it): tests never touch the real home, and the ONNX
decoder exported for a random model is reused across tests.
"""

from __future__ import annotations

import os

# -- 1. Environment ---------------------------------------------------------------------------------

# Headless QGIS: no display on CI machines. pytest-qgis starts QGIS before conftests are imported when
# it runs from the command line, so `QT_QPA_PLATFORM=offscreen` is best also set in the shell; this
# covers the other entry points (IDE runners, pytester).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import tempfile  # noqa: E402

_SESSION_DIR = tempfile.mkdtemp(prefix="quicksam-tests-")
os.environ["QUICKSAM_CACHE_DIR"] = os.path.join(_SESSION_DIR, "cache")
os.environ["QUICKSAM_CONFIG_DIR"] = os.path.join(_SESSION_DIR, "config")

import pytest  # noqa: E402 (after the environment is set)

# -- 2. Plugin ---------------------------------------------------------------------------------------


@pytest.fixture
def plugin(qgis_app, qgis_iface):
    """The real plugin, created the way QGIS does (`classFactory(iface)`) with its GUI initialised;
    unloaded at teardown."""
    import quicksam

    instance = quicksam.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()
