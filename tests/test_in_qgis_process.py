"""The interactive stage inside a QGIS executable (`qgis_process.bin`), not only inside Python.

QGIS executables hold their own GDAL and GEOS; code that pulls in pip wheels bundling other builds of
them (rasterio, shapely) breaks there (e.g. "WKT output dimension must be 2 or 3"), although it passes
in a plain Python process. This runs `quicksam:segmentprompts` for real in `qgis_process.bin`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import shapely.wkb
from osgeo import ogr

from quicksam.core.geo import pixel_to_map
from quicksam.interactive.engine import MapPrompts, SegmentEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from qgisproc import QGIS_PROCESS, qgis_process_env, run_qgis_process  # noqa: E402
from synthetic import encode, square_scene, write_raster  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(QGIS_PROCESS).exists(), reason=f"{QGIS_PROCESS} is not installed")


def test_segmentprompts_runs_inside_qgis_process(tmp_path: Path):
    raster = write_raster(tmp_path / "scene.tif", square_scene(300, 260, (80, 70, 60)))
    store_dir = tmp_path / "scene.qsam"
    encode(raster, store_dir)
    engine = SegmentEngine.open(store_dir)
    x, y = pixel_to_map(engine.store.geotransform, 110.5, 100.5)
    expected = engine.segment(MapPrompts().with_point(x, y, 1))[0]
    prompts = tmp_path / "prompts.geojson"
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}  # the raster's CRS
    prompts.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [x, y]}}]}))
    output = tmp_path / "out.gpkg"
    env = qgis_process_env(tmp_path / "qgis")
    result = run_qgis_process(["run", "quicksam:segmentprompts", "--", f"STORE={store_dir}", f"PROMPTS={prompts}",
                               f"OUTPUT={output}"], env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    dataset = ogr.Open(str(output))  # keep it: the layer lives only as long as its dataset
    layer = dataset.GetLayer(0)
    assert layer.GetFeatureCount() == 1
    feature = layer.GetNextFeature()
    actual = shapely.wkb.loads(bytes(feature.GetGeometryRef().ExportToIsoWkb()))
    assert shapely.equals_exact(shapely.normalize(actual), shapely.normalize(shapely.wkb.loads(expected.geometry.wkb)),
                                tolerance=1e-6)
    assert feature.GetField("predicted_iou") == pytest.approx(expected.score, abs=1e-6)
