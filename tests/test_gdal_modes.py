"""QuickSAM's GDAL code works whatever GDAL exception mode the process is in.

QGIS 3.40's Processing turns GDAL's Python exceptions on for the whole process (QGIS 3.22 leaves them
off): output checks, writing and segment everything must behave the same in both modes, and leave the
caller's mode as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from osgeo import gdal, ogr
from synthetic import gdal_exceptions_on

from quicksam.interactive.output_formats import check_destination, layer_names


def test_output_checks_work_with_gdal_exceptions_on(tmp_path: Path):
    with gdal_exceptions_on():
        assert layer_names(tmp_path / "missing.gpkg") is None
        for name in ("new.gpkg", "new.shp", "new.geojson", "new.fgb"):
            destination = check_destination(tmp_path / name, "segments", overwrite=False)
            assert destination.path == (tmp_path / name).absolute()
        assert gdal.GetUseExceptions() and ogr.GetUseExceptions()  # the caller's mode is back


def test_an_existing_layer_is_still_refused_with_gdal_exceptions_on(tmp_path: Path):
    path = tmp_path / "out.gpkg"
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    dataset.CreateLayer("segments", geom_type=ogr.wkbMultiPolygon)
    dataset = None
    from quicksam.core.errors import QuickSamError

    with gdal_exceptions_on(), pytest.raises(QuickSamError, match="already has a layer 'segments'"):
        check_destination(path, "segments", overwrite=False)
