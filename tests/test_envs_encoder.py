"""The encoder environment: machine detection, the torch build chosen, and (slow) a real venv built by the
set-up from this machine's packages, verified with its device reported, then used by a real
quicksam:encoderaster run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import gradient, write_raster

from quicksam.core.store import FeatureStore
from quicksam.envs.commands import Runner
from quicksam.envs.encoder_env import (
    RECORD_NAME,
    Machine,
    cuda_build_for,
    detect_machine,
    read_record,
    torch_index_args,
)
from quicksam.envs.locations import Locations, venv_python
from quicksam.envs.pins import ENCODER_REQUIREMENTS, ONNXRUNTIME_VERSION, TORCH_REQUIREMENTS
from quicksam.envs.setup import SetupRequest, run_setup
from quicksam.envs.status import collect_status, describe, remove_all

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
|   0  NVIDIA GeForce RTX 4070        Off |   00000000:01:00.0  On |                  N/A |
"""


def _fake_run(stdout: str, returncode: int = 0):
    def run(command, **kwargs):
        if returncode is None:
            raise FileNotFoundError(command[0])
        return subprocess.CompletedProcess(command, returncode, stdout, "")
    return run


def test_a_working_nvidia_driver_gets_the_matching_cuda_build():
    machine = detect_machine("linux", "x86_64", run=_fake_run(NVIDIA_SMI))
    assert machine == Machine("cuda", "NVIDIA GeForce RTX 4070, CUDA 12.8", "cu128")
    assert torch_index_args(machine, {}) == ["--extra-index-url", "https://download.pytorch.org/whl/cu128"]


@pytest.mark.parametrize("platform, arch, run, accelerator", [
    ("linux", "x86_64", _fake_run("", None), "cpu"),  # no nvidia-smi
    ("windows", "AMD64", _fake_run("NVIDIA-SMI has failed", 9), "cpu"),  # driver broken
    ("macos", "arm64", _fake_run("", None), "mps"),
    ("macos", "x86_64", _fake_run("", None), "cpu"),
])
def test_other_machines(platform, arch, run, accelerator):
    machine = detect_machine(platform, arch, run=run)
    assert machine.accelerator == accelerator
    assert torch_index_args(machine, {}) == []  # pip's own configuration decides (mirrors honoured)


def test_cuda_builds_by_driver_and_a_chosen_index():
    assert cuda_build_for((12, 6)) == "cu126" and cuda_build_for((13, 1)) == "cu130"
    assert cuda_build_for((11, 4)) is None and cuda_build_for(None) is None
    chosen = {"QUICKSAM_TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu"}
    assert torch_index_args(Machine("cpu"), chosen) == ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


def test_pins_are_the_tested_requirements():
    torch_file = (ROOT / "requirements-torch.txt").read_text().split()
    requirements = (ROOT / "requirements.txt").read_text().split()
    assert all(pin in torch_file for pin in TORCH_REQUIREMENTS if "==" in pin)
    assert all(pin in requirements for pin in ENCODER_REQUIREMENTS if "==" in pin or ">=" in pin)
    assert f"onnxruntime=={ONNXRUNTIME_VERSION}" in requirements


@pytest.mark.slow
def test_the_set_up_builds_a_working_encoder_environment_that_encodes(qgis_processing, plugin, tmp_path,
                                                                     monkeypatch):
    if not Path("/usr/bin/qgis").exists():
        pytest.skip("needs QGIS installed from distribution packages (/usr/bin/qgis)")
    from quicksam.ui import settings

    locations = Locations(tmp_path / "profile", tmp_path / "data", tuple(sys.version_info[:2]))
    runner = Runner(locations.logs / "setup.log")
    request = SetupRequest(locations, "/usr", "/usr/bin/qgis", tuple(sys.version_info[:2]), runtime=False)
    try:
        result = run_setup(request, runner, lambda fraction, message: None)
        check = result.encoder
        assert check.ok and check.device == detect_machine("linux").accelerator
        assert result.encoder_python == str(venv_python(locations.encoder_env))
        assert read_record(locations.encoder_env)["check"]["device"] == check.device
        status = collect_status(locations)
        assert status.encoder_bytes > 500_000_000 and status.encoder_device == check.device
        assert f"on {check.device}" in describe(status)[1]

        # Re-running finds it up to date: nothing is rebuilt.
        builds = (locations.logs / "setup.log").read_text().count("-m venv")
        again = run_setup(request, runner, lambda fraction, message: None)
        assert again.encoder.torch == check.torch
        assert (locations.logs / "setup.log").read_text().count("-m venv") == builds

        # The recorded Python runs quicksam:encoderaster (the plugin reaches it as `quicksam` on PYTHONPATH,
        # as an installed plugin folder does).
        code = tmp_path / "code"
        code.mkdir()
        (code / "quicksam").symlink_to(ROOT)
        monkeypatch.setenv("PYTHONPATH", str(code))
        monkeypatch.delenv(settings.PYTHON_ENV_VAR, raising=False)
        settings.PYTHON_EXECUTABLE.reset()
        settings.SETUP_ENCODER_PYTHON.set_value(result.encoder_python)
        assert settings.encoder_python() == result.encoder_python
        import processing

        raster = write_raster(tmp_path / "rgb.tif", gradient(300, 256))
        outputs = processing.run("quicksam:encoderaster", {"INPUT": str(raster), "OUTPUT": str(tmp_path / "store"),
                                                           "RANDOM_WEIGHTS": True, "TILE_SIZE": 256, "OVERLAP": 32})
        assert FeatureStore.open(Path(outputs["OUTPUT"])).summary()["complete"]
    finally:
        settings.SETUP_ENCODER_PYTHON.reset()
        assert remove_all(locations) == []
    assert not locations.encoder_env.exists() and not (locations.encoder_env / RECORD_NAME).exists()
