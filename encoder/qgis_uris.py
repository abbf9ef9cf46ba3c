"""QGIS's web-layer URIs (provider 'wms': XYZ, WMS, WMTS) as the encoder's canonical sources (no QGIS needed).

QGIS keeps a web layer's settings in one URI, `key=value&key=value` (Layer Properties > Information >
Source). These functions read that text, so the Processing algorithm (ui/layer_sources.py) and the
`quicksam encode` command (a URI pasted from QGIS) share one implementation:

- XYZ: `type=xyz&url=…&zmin=…&zmax=…` → itself, normalised (online_sources.parse_xyz_uri);
- WMTS: `…&layers=…&styles=…&tileMatrixSet=…&url=…` → GDAL's `WMTS:capabilities-URL,layer=…,…`;
- WMS: `…&crs=…&format=…&layers=…&styles=…&url=…` → GDAL's `WMS:` GetMap URL over a bounding box at a
  resolution (a WMS has no pixel size of its own, so both must be given).

Coordinates: `bbox` is (xmin, ymin, xmax, ymax) in the layer's CRS (the `crs` of the URI); `resolution` is
in map units of that CRS per pixel.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote, urlsplit

from ..core.errors import RasterError
from .online_sources import is_qgis_xyz_uri, parse_xyz_uri

#: Query keys of a GetMap request that `wms_source` writes itself.
_GETMAP_KEYS = ("SERVICE", "VERSION", "REQUEST", "LAYERS", "STYLES", "SRS", "CRS", "BBOX", "FORMAT", "TRANSPARENT",
                "WIDTH", "HEIGHT", "MINRESOLUTION")


def uri_pairs(text: str) -> List[Tuple[str, str]]:
    """Every (key, value) of a QGIS URI in order, percent-decoded, repeated keys kept (a WMS layer of several
    layers repeats `layers=` and `styles=`)."""
    pairs = []
    for part in text.split("&"):
        key, sep, value = part.partition("=")
        if sep:
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _values(pairs: Sequence[Tuple[str, str]], key: str) -> List[str]:
    return [value for name, value in pairs if name == key]


def is_qgis_web_uri(text: str) -> bool:
    """True for a QGIS 'wms'-provider URI: XYZ, or WMS/WMTS (a `url=` and `layers=`)."""
    if is_qgis_xyz_uri(text):
        return True
    keys = {key for key, _ in uri_pairs(text)}
    return {"url", "layers"} <= keys


def is_qgis_wmts_uri(text: str) -> bool:
    return any(key == "tileMatrixSet" for key, _ in uri_pairs(text))


def refuse_credentials(text: str) -> None:
    """RasterError for a layer whose URI needs QGIS's credentials: the encoder runs outside QGIS (and the
    store would record them)."""
    keys = {key for key, value in uri_pairs(text) if value}
    if keys & {"authcfg", "username", "password"}:
        raise RasterError("the layer uses a user name, a password or a QGIS authentication configuration, which "
                          "the encoder (a separate process) cannot use; encode a copy saved as a GeoTIFF "
                          "(right-click the layer > Export > Save As…)")


def wms_source(url: str, layers: str, crs: str, bbox: Sequence[float], resolution: float, styles: str = "",
               image_format: str = "image/png", transparent: bool = False) -> str:
    """GDAL's `WMS:` GetMap URL of a WMS layer over `bbox` (xmin, ymin, xmax, ymax in `crs`, which is also
    the request CRS) at `resolution` map units per pixel (WMS 1.1.1, whose BBOX is always x, y)."""
    if not resolution > 0:
        raise RasterError(f"the WMS resolution must be a positive number of map units per pixel, got {resolution}")
    kept = [(k, v) for k, v in uri_pairs(urlsplit(url).query) if k.upper() not in _GETMAP_KEYS]
    fields = kept + [("SERVICE", "WMS"), ("VERSION", "1.1.1"), ("REQUEST", "GetMap"), ("LAYERS", layers),
                     ("STYLES", styles), ("SRS", crs), ("BBOX", ",".join(repr(float(v)) for v in bbox)),
                     ("FORMAT", image_format), ("TRANSPARENT", "TRUE" if transparent else "FALSE"),
                     ("MINRESOLUTION", repr(float(resolution)))]
    return "WMS:" + url.split("?")[0] + "?" + "&".join(f"{k}={quote(v, safe=':/,')}" for k, v in fields)


def wmts_capabilities_url(url: str) -> str:
    """The GetCapabilities URL of a WMTS service URL as QGIS stores it (a RESTful capabilities document is kept;
    a KVP endpoint gets SERVICE=WMTS&REQUEST=GetCapabilities)."""
    if "getcapabilities" in url.lower() or urlsplit(url).path.lower().endswith(".xml"):
        return url
    return url + ("&" if "?" in url else "?") + "SERVICE=WMTS&REQUEST=GetCapabilities"


def wmts_source(capabilities_url: str, layer: str, tile_matrix_set: str = "", style: str = "",
                zoom: Optional[int] = None) -> str:
    """GDAL's `WMTS:` string of a WMTS layer; `zoom` = GDAL's zoom_level (the finest tile matrix read)."""
    if "," in capabilities_url:
        raise RasterError(f"the WMTS capabilities URL '{capabilities_url}' holds a comma, which GDAL's WMTS: "
                          "syntax cannot carry; use a URL without one")
    parts = [f"WMTS:{capabilities_url}", f"layer={layer}"]
    parts += [f"tilematrixset={tile_matrix_set}"] if tile_matrix_set else []
    parts += [f"style={style}"] if style else []
    parts += [f"zoom_level={int(zoom)}"] if zoom is not None else []
    return ",".join(parts)


def _wms_from_uri(pairs: Sequence[Tuple[str, str]], bbox: Optional[Sequence[float]],
                  resolution: Optional[float]) -> str:
    """The `WMS:` source of a QGIS WMS URI over `bbox` at `resolution`; RasterError when either is missing."""
    if resolution is None:
        raise RasterError("a WMS layer has no pixel size of its own: choose the resolution to encode at (map "
                          "units per pixel), or save the area as a GeoTIFF at the resolution you want "
                          "(right-click the layer > Export > Save As…) and encode that")
    if bbox is None:
        raise RasterError("a WMS layer covers its whole service area: choose the extent to encode")
    single = dict(pairs)
    styles = _values(pairs, "styles")
    return wms_source(single.get("url", ""), ",".join(_values(pairs, "layers")), single.get("crs", "EPSG:4326"),
                      bbox, resolution, styles=",".join(styles) if any(styles) else "",
                      image_format=single.get("format") or "image/png",
                      transparent="png" in (single.get("format") or "image/png"))


def source_from_qgis_uri(text: str, zoom: Optional[int] = None, bbox: Optional[Sequence[float]] = None,
                         resolution: Optional[float] = None) -> str:
    """The canonical source of a QGIS web-layer URI (see the module docstring): XYZ and WMTS read at `zoom`
    (default: the layer's finest), WMS over `bbox` at `resolution`. RasterError, one line, otherwise."""
    refuse_credentials(text)
    if is_qgis_xyz_uri(text):
        return parse_xyz_uri(text, zoom).record()
    pairs = uri_pairs(text)
    single = dict(pairs)
    if not single.get("url"):
        raise RasterError("the layer's source names no service URL (url=…); add the layer again from its "
                          "service connection")
    if is_qgis_wmts_uri(text):
        return wmts_source(wmts_capabilities_url(single["url"]), single.get("layers", ""),
                           single.get("tileMatrixSet", ""), single.get("styles", ""), zoom)
    if zoom is not None:
        raise RasterError("a zoom level applies to XYZ and WMTS layers only; leave it out for a WMS layer")
    return _wms_from_uri(pairs, bbox, resolution)
