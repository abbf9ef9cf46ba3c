"""What the set-up needs to know about the running QGIS, and the runtime's activation on plugin load."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from qgis.core import QgsApplication

from ...core.logger import LOGGER
from ...envs.locations import Locations
from ...envs.runtime import Activation, activate, deactivate
from ...envs.setup import SetupRequest


def profile_dir() -> Path:
    """The folder of the running QGIS profile (`.../QGIS3/profiles/default`)."""
    return Path(QgsApplication.qgisSettingsDirPath())


def qgis_locations() -> Locations:
    return Locations.for_profile(profile_dir(), sys.version_info[:2])


def setup_request(runtime: bool = True, encoder: bool = True, existing_python: Optional[str] = None,
                  locations: Optional[Locations] = None) -> SetupRequest:
    """A set-up of the running QGIS: its prefix, executable and Python version (read on the main thread)."""
    return SetupRequest(locations or qgis_locations(), QgsApplication.prefixPath(), sys.executable,
                        sys.version_info[:2], runtime=runtime, encoder=encoder, existing_python=existing_python)


def activate_runtime(locations: Optional[Locations] = None) -> Activation:
    """Append the runtime folder of this QGIS profile to sys.path if the set-up installed one."""
    folder = (locations or qgis_locations()).runtime
    state = activate(folder)
    if state is not Activation.ABSENT:
        LOGGER.debug("ONNX Runtime folder %s: %s", folder, state.value)
    return state


def deactivate_runtime(locations: Optional[Locations] = None) -> None:
    deactivate((locations or qgis_locations()).runtime)
