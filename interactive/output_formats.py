"""Vector output files: the format chosen by the file's extension, the checks made before a run, and
writing QuickSAM's layer into a file without touching anything else in it.

GDAL/OGR only (no QGIS, no pyogrio/fiona): `quicksam segment`, `quicksam segment-all` and the algorithm
quicksam:segmentall write through here, inside QGIS's process or not. This module is their door: the
check of an output before a run (`check_destination`) is here; the formats are in vector_formats.py and
the writing in vector_writing.py, both imported from here.

Formats (`FORMATS`), each with its limits handled:
- GeoPackage `.gpkg`: a container. Only QuickSAM's layer (default `segments`) is added or replaced, in
  one transaction; every other layer of the file is kept.
- Shapefile `.shp`: field names of at most 10 characters (`short_field_names`: SAM's names
  `predicted_iou` and `stability_score` become `predicted_` and `stability_`; the others fit), one
  geometry type per file (QuickSAM writes
  MultiPolygon only), the CRS in the `.prj`, text in UTF-8 (the `.cpg`) of at most 254 bytes, and an
  empty text reads back as NULL (dBASE cannot tell them apart).
- GeoJSON `.geojson` / `.json`: in the raster's CRS, stated by a `crs` member naming its EPSG code
  (GeoJSON 2008), not reprojected to EPSG:4326 as RFC 7946 asks: the polygons keep their exact pixel
  edges and every QuickSAM output is in the raster's CRS. GDAL and QGIS read that member; web tools that
  assume longitude/latitude need a reprojection (e.g. `ogr2ogr -t_srs EPSG:4326 -lco RFC7946=YES`). A CRS
  without an EPSG code cannot be stated so and is refused with a message.
- FlatGeobuf `.fgb`, GeoParquet `.parquet` (only where this GDAL has the Parquet driver).
- Any other extension of a vector format this GDAL can create is written by the first such OGR driver
  (as `ogr2ogr` chooses), after a trial write shows that the format keeps polygons and their attributes.

A file that holds one layer (Shapefile, GeoJSON, FlatGeobuf, ...) is QuickSAM's layer: an existing one
is replaced only with overwrite. New files are written in a private folder beside the output and moved
into place when complete, so a failed write leaves the old file as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.diskspace import folder_unwritable_reason
from ..core.errors import QuickSamError
from .gdal_errors import with_gdal_return_codes
from .vector_formats import (
    DEFAULT_LAYER,
    FORMATS,
    Destination,
    VectorFormat,
    accepted_formats,
    check_crs,
    check_layer_name,
    epsg_code,
    existing_files,
    format_for,
    layer_names,
    quiet_gdal,
    short_field_names,
)
from .vector_writing import WrittenLayer, remove_gpkg, try_format, write_layer

__all__ = ["COMMAND_LINE_OVERWRITE", "DEFAULT_LAYER", "FORMATS", "PYTHON_OVERWRITE", "Destination", "VectorFormat",
           "WrittenLayer", "accepted_formats", "check_crs", "check_destination", "check_layer_name", "epsg_code",
           "format_for", "layer_names", "remove_gpkg", "short_field_names", "write_layer"]

#: How a caller of the Python functions asks to overwrite; the CLI and the Processing algorithm pass their own
#: wording ("pass --overwrite", "tick 'Overwrite an existing output' (OVERWRITE)") as `how_to_overwrite`.
PYTHON_OVERWRITE = "pass overwrite=True"
#: The `quicksam` commands' wording (`segment` and `segment-all` alike: one wording for one option).
COMMAND_LINE_OVERWRITE = "pass --overwrite"


def _can_add_layer(path: Path, fmt: VectorFormat) -> bool:
    """Whether GDAL can open the existing file `path` for update and create a layer in it."""
    from osgeo import gdal, ogr

    with quiet_gdal():
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=[fmt.driver])
        return dataset is not None and bool(dataset.TestCapability(ogr.ODsCCreateLayer))


@with_gdal_return_codes
def check_destination(path: Path, layer: str, overwrite: bool, what: str = "--output",
                      how_to_overwrite: str = COMMAND_LINE_OVERWRITE,
                      layer_hint: str = "choose another --layer") -> Destination:
    """The destination of a run (`path` made absolute), checked before any work: the one output check of
    `quicksam segment`, `quicksam segment-all` and `automatic.segment_everything`.

    QuickSamError (one line) when the extension or layer name is unusable, the folder is missing or
    read-only, or the output exists and overwrite is not asked for: a single-layer file that exists, or a
    multi-layer file that already has `layer`. A multi-layer file without `layer` gets it added, overwrite
    or not; one GDAL cannot open is a file like any other (replaced only with overwrite). Messages name the
    output as `what`, say "{layer_hint}" for another layer and end "(or {how_to_overwrite})", in the
    caller's words (the defaults are the `quicksam` commands')."""
    path = Path(path).expanduser().absolute()
    fmt = format_for(path, what)
    check_layer_name(layer)
    if path.is_dir():
        raise QuickSamError(f"{what} '{path}' is a folder; give a file name such as segments.gpkg")
    if not path.parent.is_dir():
        raise QuickSamError(f"the folder of {what} '{path.parent}' does not exist; create it first")
    reason = folder_unwritable_reason(path.parent)  # tried, not guessed from permission bits (root, ro mounts)
    if reason is not None:
        raise QuickSamError(f"the folder '{path.parent}' is not writable ({reason}); choose another output "
                            "location")
    names = layer_names(path, fmt) if fmt.multi_layer and path.is_file() else None
    if names is not None:
        if not os.access(path, os.W_OK):
            raise QuickSamError(f"'{path}' is read-only; QuickSAM adds its layer '{layer}' to it, so make it "
                                "writable or choose another output")
        if layer.lower() in (name.lower() for name in names) and not overwrite:
            raise QuickSamError(f"'{path}' already has a layer '{layer}'; {layer_hint}, or delete that layer "
                                f"(or {how_to_overwrite})")
        if not _can_add_layer(path, fmt):
            raise QuickSamError(f"GDAL's {fmt.driver} driver cannot add a layer to the existing file '{path}'; "
                                "choose a new file name")
    elif existing_files(path, fmt) and not overwrite:
        raise QuickSamError(f"'{path}' exists; choose another name or delete it (or {how_to_overwrite})")
    if not fmt.tried:
        try_format(fmt)
    return Destination(path, fmt, layer)
