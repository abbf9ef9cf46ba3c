"""The Segment dock on a store with two levels (issue 11), in real QGIS with real map-tool events: the dock
says the levels, and two clicks farther apart than a finest tile are decoded on the coarser level, whose
level and resolution the accepted feature carries.

The scene (tests/synthetic.py): 300 x 300 px, EPSG:32633, 10 m pixels, a bright 60 px square at pixel
(110, 110); levels 1 and 4, 128 px tiles with 32 px overlap (level 4 is one 75 px tile).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsRasterLayer
from synthetic import pixel_to_map_default, random_model, square_scene, write_raster
from test_dock import DOCK_SETTINGS, accept_and_wait, click_map, ogr_features

from quicksam.encoder.levels_pipeline import encode_levels
from quicksam.encoder.pipeline import EncodeRequest
from quicksam.ui import settings
from quicksam.ui.dock.dock import SegmentDock
from quicksam.ui.layers import OUTPUT_FILE

TILE = 128


@pytest.fixture
def two_levels(tmp_path: Path) -> Path:
    """scene.tif and its store scene.qsam with levels 1 and 4 (random weights)."""
    raster = write_raster(tmp_path / "scene.tif", square_scene(300, 300, (110, 110, 60)))
    request = EncodeRequest(raster=str(raster), store=tmp_path / "scene.qsam", model="sam2.1_hiera_t",
                            tile_size=TILE, overlap=32, device="cpu", levels=(1, 4))
    encode_levels(request, model=random_model(TILE))
    return tmp_path


@pytest.fixture
def dock(two_levels: Path, show_raster, qgis_iface) -> SegmentDock:
    for setting in DOCK_SETTINGS:
        setting.reset()
    settings.HOVER_PREVIEW.set_value(False)
    settings.REFINE_EDGES.reset()
    layer: QgsRasterLayer = show_raster(two_levels / "scene.tif")
    assert layer.isValid()
    widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
    widget.setUserVisible(True)
    QgsApplication.processEvents()
    yield widget
    widget.release()
    widget.deleteLater()
    QgsApplication.processEvents()
    for setting in DOCK_SETTINGS:
        setting.reset()


def test_the_dock_says_the_levels_and_decodes_far_apart_clicks_on_the_coarse_one(dock: SegmentDock,
                                                                                 two_levels: Path) -> None:
    assert "2 levels: 10, 40 m per pixel" in dock.storeInfoLabel.text()
    dock.controller.activate_tool()
    for col in (40, 260):   # 220 px apart: no 128 px tile of the finest level holds both
        click_map(dock, *pixel_to_map_default(col, 150))
        assert dock.controller.wait_idle()
    segments = dock.controller.session.segments
    assert segments and all(segment.level_factor == 4.0 for segment in segments)
    accept_and_wait(dock)
    [(attributes, _)] = ogr_features(two_levels / "scene.qsam" / OUTPUT_FILE)
    assert (attributes["level_factor"], attributes["resolution"]) == (4.0, pytest.approx(40.0))
    assert attributes["tile_id"] == "levels/x4/r0000c0000"


def test_refine_edges_in_the_dock_gives_the_object_finest_edges(dock: SegmentDock, two_levels: Path) -> None:
    """Ticking *Refine edges on the finest level* (remembered in the settings): the far-apart clicks' object,
    found on level 4, is accepted with the finest level's pixels, refined from level 4's tile."""
    dock.refineEdgesCheck.setChecked(True)
    assert settings.REFINE_EDGES.value() is True
    dock.controller.activate_tool()
    for col in (40, 260):
        click_map(dock, *pixel_to_map_default(col, 150))
        assert dock.controller.wait_idle()
    segments = dock.controller.session.segments
    assert segments and all(segment.level_factor == 1.0 for segment in segments)
    accept_and_wait(dock)
    [(attributes, _)] = ogr_features(two_levels / "scene.qsam" / OUTPUT_FILE)
    assert (attributes["level_factor"], attributes["tile_id"]) == (1.0, "levels/x4/r0000c0000+refined")
    settings.REFINE_EDGES.reset()
