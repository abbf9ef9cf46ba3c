"""From the plugin zip to a polygon in the real QGIS desktop, as a user without a terminal gets there.

`docs/screenshot/walkthrough.sh` starts `qgis` under Xvfb on a fresh profile and HOME, with neither the
development venv nor the checkout on QGIS's Python path, and `walkthrough.py` inside it: the zip is
installed with QGIS's plugin installer, the set-up installs ONNX Runtime with real pip and records an
existing encoder Python (this venv's), the raster from ../shared/data is encoded from Processing's
dialog, the dock's point tool gets a real mouse click on the canvas and the object is accepted. The
script reports what it saw as JSON; the pictures are those docs/install.md shows (`make walkthrough`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "docs" / "screenshot" / "walkthrough.sh"
RASTER = REPO.parent / "shared" / "data" / "L7_ETMs.tif"
IMAGES = ["install-1-setup.png", "install-2-setup-done.png", "install-3-encode.png", "install-4-encoded.png",
          "install-5-click.png", "install-6-polygon.png"]


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("walkthrough")
    report = out / "report.json"
    subprocess.run(["bash", str(SCRIPT), str(out / "img"), str(report), str(RASTER)], check=True,
                   env={"PATH": "/usr/local/bin:/usr/bin:/bin", "QUICKSAM_WALK_ENCODER_PYTHON": sys.executable,
                        "HOME": str(Path.home())}, timeout=1200, capture_output=True)
    seen = json.loads(report.read_text())
    seen["images_folder"] = str(out / "img")
    return seen


@pytest.mark.slow
def test_every_step_of_the_walkthrough_ran(walkthrough):
    assert walkthrough["error"] is None, walkthrough["error"] + walkthrough["qgis_log_tail"]
    assert walkthrough["steps"][0] == "install_zip" and walkthrough["steps"][-1] == "last_picture"


@pytest.mark.slow
def test_the_zip_installs_into_the_profile_and_is_enabled(walkthrough):
    assert walkthrough["loaded_before_install"] is False
    assert walkthrough["active_after_install"] is True
    assert "/python/plugins/quicksam/" in walkthrough["module_file"]
    assert "/.venv/" not in walkthrough["module_file"] and str(REPO) not in walkthrough["module_file"]


@pytest.mark.slow
def test_the_set_up_makes_segmenting_possible_without_a_restart(walkthrough):
    assert "cannot be imported" in walkthrough["setup_status_before"]
    assert "you can segment now" in walkthrough["setup_message_runtime"]
    assert walkthrough["profile_quicksam_runtime"] == [f"py3{sys.version_info[1]}"]
    assert [Path(path).parts[4:7] for path in walkthrough["profile_quicksam_onnxruntime"]] == [
        ("runtime", f"py3{sys.version_info[1]}", "onnxruntime")]
    assert "The encoder will use torch" in walkthrough["setup_message_encoder"]
    assert sys.executable in walkthrough["setup_status_after"]


@pytest.mark.slow
def test_nothing_is_written_into_qgis_python_or_the_plugin_folder(walkthrough):
    qgis_python = subprocess.run(["/usr/bin/python3", "-c", "import onnxruntime"], capture_output=True,
                                 env={"PATH": "/usr/bin:/bin"})
    assert qgis_python.returncode != 0, "onnxruntime landed in QGIS's own Python"
    assert walkthrough["plugin_files_at_end"] == walkthrough["plugin_files_after_install"]


@pytest.mark.slow
def test_the_store_goes_beside_the_raster_and_the_dock_finds_it(walkthrough):
    store = Path(walkthrough["encode_results"]["OUTPUT"])
    assert store.parent.name == "data", store  # the folder the user's raster is in, not Processing's temp
    assert any(path.startswith(f"data/{store.name}/") for path in walkthrough["data_folder"])
    assert walkthrough["dock_store"] == str(store)


@pytest.mark.slow
def test_a_click_gives_a_polygon_in_the_rasters_crs(walkthrough):
    layers = walkthrough["output_layers"]
    assert len(layers) == 1, layers
    assert layers[0]["features"] == 1 and layers[0]["geometry"] == "Polygon"
    assert layers[0]["crs"] == walkthrough["raster_crs"] == "EPSG:31985"
    assert layers[0]["area"] > 0


@pytest.mark.slow
def test_each_step_has_its_picture(walkthrough):
    folder = Path(walkthrough["images_folder"])
    assert walkthrough["images"] == IMAGES
    for name in IMAGES:
        assert (folder / name).stat().st_size > 20_000, name  # a real screen, not an empty image
