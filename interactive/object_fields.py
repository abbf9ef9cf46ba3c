"""The measures QuickSAM writes with every object, under the same names in every output (GDAL/OGR's own
bindings; no QGIS).

`quicksam segment`, the algorithm quicksam:segmentprompts and the dock (ui/layers.py) and `quicksam
segment-all` with quicksam:segmentall (automatic.py) all write these fields, named as SAM names them where
SAM has a name:

- `predicted_iou`: the model's estimate of the mask's IoU (SAM's `iou_predictions`; `predicted_iou` in
  the records of SAM's automatic mask generator);
- `stability_score`: the IoU of the mask thresholded one logit above and one below the mask threshold
  (SAM's `stability_score`; segment everything's `stability_score_offset`, 1 by default), on the
  low-resolution logits;
- `area`: the polygon's planar area in the layer CRS's map units squared (m² for a CRS in metres, ft² in
  feet, degrees² for longitude/latitude);
- `area_m2`: the area in square metres: for a projected CRS the planar area converted to metres; for a
  geographic CRS the ellipsoidal area on the CRS's ellipsoid.

Segment everything also writes the level each object came from (docs/segment-everything.md, *Levels*):
`level_factor`, the level's pixel over the raster's own (1 = the raster's pixels; `Segment.level_factor`),
and `resolution`, the level's ground resolution in map units of the raster's CRS per pixel.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Tuple

if TYPE_CHECKING:
    from osgeo import ogr, osr

PREDICTED_IOU = "predicted_iou"
STABILITY_SCORE = "stability_score"
AREA = "area"
AREA_M2 = "area_m2"
LEVEL_FACTOR = "level_factor"
RESOLUTION = "resolution"
#: The measures of an object, in the order both outputs write them.
MEASURE_FIELDS: Tuple[str, ...] = (PREDICTED_IOU, STABILITY_SCORE, AREA, AREA_M2)
#: The fields of segment everything's output (OGR types: "int64", "real", "str").
SEGMENT_ALL_FIELDS: Tuple[Tuple[str, str], ...] = (
    ("id", "int64"), *((name, "real") for name in MEASURE_FIELDS), ("tile_ids", "str"), ("model", "str"),
    ("checkpoint", "str"), (LEVEL_FACTOR, "real"), (RESOLUTION, "real"))


def crs_srs(crs_wkt: str) -> osr.SpatialReference:
    """An osr.SpatialReference of `crs_wkt` with x = easting/longitude, y = northing/latitude (GDAL's
    traditional order, as geotransforms and QuickSAM's geometries have them)."""
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def square_metres(geometry: ogr.Geometry, srs: osr.SpatialReference) -> float:
    """The area in m² of the polygonal ogr.Geometry `geometry` whose coordinates are in `srs` (see
    `crs_srs`): planar (map units converted to metres) for a projected CRS, ellipsoidal for a geographic
    one (`ellipsoidal_area`)."""
    if srs.IsGeographic():
        return ellipsoidal_area(geometry, srs)
    return geometry.GetArea() * srs.GetLinearUnits() ** 2


def ellipsoidal_area(geometry: ogr.Geometry, srs: osr.SpatialReference) -> float:
    """The area in m², on the ellipsoid of the geographic CRS `srs`, of the polygonal ogr.Geometry
    `geometry` in longitude/latitude (`srs`'s units, traditional order).

    GDAL 3.9 and later: OGR's geodesic area (edges are geodesics, Karney's algorithm). Before (Debian 12
    has GDAL 3.6): the planar area in a Lambert azimuthal equal-area projection on the same ellipsoid,
    centred on the geometry; that projection keeps areas exactly, and a pixel-edged polygon's edges differ
    from geodesics by far less than a square millimetre over objects a few kilometres across.
    """
    from osgeo import osr

    located = geometry.Clone()
    located.AssignSpatialReference(srs)
    if hasattr(located, "GetGeodesicArea"):
        area = located.GetGeodesicArea()
        if area >= 0:  # negative: GDAL could not (exceptions off); the projection below still can
            return float(area)
    lon, lat = _centre_degrees(located, srs)
    equal_area = osr.SpatialReference()
    equal_area.CopyGeogCSFrom(srs)
    equal_area.SetLAEA(lat, lon, 0.0, 0.0)
    equal_area.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    located.Transform(osr.CoordinateTransformation(srs, equal_area))
    return float(located.GetArea())


def _centre_degrees(geometry: ogr.Geometry, srs: osr.SpatialReference) -> Tuple[float, float]:
    """(longitude, latitude) in degrees of the centre of the geometry's envelope (`srs`'s angular units)."""
    xmin, xmax, ymin, ymax = geometry.GetEnvelope()
    degrees = math.degrees(srs.GetAngularUnits())  # degrees per unit of the CRS (1 for degrees)
    return (xmin + xmax) / 2 * degrees, (ymin + ymax) / 2 * degrees
