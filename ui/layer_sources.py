"""What the encoder reads for a QGIS raster layer: its source as the encoder takes it, and the area to encode
(QGIS side of encoder/online_sources.py and encoder/qgis_uris.py).

- provider 'gdal' (a file, a VRT, a COG through /vsicurl/): the file or GDAL path (encode_job.raster_file_path);
- provider 'wms' (XYZ, WMTS, WMS): the canonical source of the layer's URI, read by GDAL's WMS/WMTS drivers in
  the encoder process. These services cover huge areas, so without an extent the layer's own extent is used only
  when it is small at the resolution read (`MAX_PIXELS_WITHOUT_EXTENT`); otherwise the user is asked for one.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

from qgis.core import QgsProcessingException, QgsRasterLayer

from ..core.errors import RasterError
from ..encoder.online_sources import source_pixel_size
from ..encoder.qgis_uris import source_from_qgis_uri
from .algorithms.encode_job import raster_file_path
from .i18n import tr

Extent = Tuple[float, float, float, float]
#: A web layer's whole extent is encoded without asking only up to this many pixels (100 tiles of 1024 px).
MAX_PIXELS_WITHOUT_EXTENT = 100 * 1024 * 1024


def encoder_source(layer: QgsRasterLayer, extent: Optional[Extent],
                   resolution: Optional[float] = None) -> Tuple[str, Optional[Extent]]:
    """(source, extent) the encoder is given for `layer`: `extent` (xmin, ymin, xmax, ymax in the layer's CRS)
    as chosen, or for a web layer without one its own extent when small enough. `resolution` (layer CRS units
    per pixel) is what a WMS layer is read at. QgsProcessingException saying what to do otherwise."""
    if layer.providerType() != "wms":
        return raster_file_path(layer), extent
    rect = layer.extent()
    whole = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
    try:
        source = source_from_qgis_uri(layer.source(), bbox=extent or whole, resolution=resolution)
    except RasterError as exc:
        raise QgsProcessingException(tr("The layer '{name}' cannot be encoded as it is: {reason}.").format(
            name=layer.name(), reason=str(exc))) from exc
    if extent is None:
        extent = _small_layer_extent(layer, whole, source_pixel_size(source))
    return source, extent


def _small_layer_extent(layer: QgsRasterLayer, whole: Extent, pixel: Optional[float]) -> Extent:
    """`whole`, the layer's extent (its CRS), when it holds at most MAX_PIXELS_WITHOUT_EXTENT pixels of `pixel`
    map units; QgsProcessingException asking for an extent otherwise (an XYZ layer's extent is the whole world;
    a WMTS layer's pixel size is known only to GDAL, so it always needs one)."""
    width, height = whole[2] - whole[0], whole[3] - whole[1]
    finite = all(math.isfinite(value) for value in whole) and width > 0 and height > 0
    if finite and pixel and (width / pixel) * (height / pixel) <= MAX_PIXELS_WITHOUT_EXTENT:
        return whole
    raise QgsProcessingException(tr(
        "The layer '{name}' is a web map covering a very large area: choose the Extent to encode (for example "
        "the map canvas extent, from the Extent field's menu).").format(name=layer.name()))
