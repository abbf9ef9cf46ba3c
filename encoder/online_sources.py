"""Online rasters as the encoder reads them: XYZ tiles, WMS, WMTS, COGs over HTTP (no QGIS, no GDAL bindings).

A *source* is the text the encoder is given for a raster and records in the store's manifest (`raster.path`).
`resolve_source` turns what a user typed (CLI) or what a QGIS layer holds (ui/layer_sources.py) into one
canonical source; `gdal_dataset` turns a canonical source into the string GDAL opens:

- local file, VRT: its path (GDAL opens the path);
- raster file over HTTP(S), e.g. a COG: `/vsicurl/URL` (other `/vsi…` network paths as is): GDAL reads it with
  HTTP Range requests;
- XYZ tiles: QGIS's XYZ URI `type=xyz&url=…&zmin=…&zmax=…`; GDAL opens a `<GDAL_WMS>` TMS description of it;
- WMS: GDAL's `WMS:URL?…&LAYERS=…&BBOX=…&MINRESOLUTION=…` (GDAL's WMS driver opens it as is);
- WMTS: GDAL's `WMTS:URL,layer=…[,zoom_level=…]` (GDAL's WMTS driver opens it as is).

For XYZ, `zmax` is the zoom level read at full resolution (the pixels the encoder sees); the zooms from
`zmin` up are the dataset's overviews (one per level), so a coarser read asks the service for coarser
tiles and never for a zoom it does not serve. Tile services cover the whole world: an extent is required
(`require_extent`). Network reads go through encoder/network_reads.py (bounded connections, retries).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

from ..core.errors import RasterError

#: Half the side of the EPSG:3857 (web Mercator) world, in metres.
WEB_MERCATOR_HALF = 20037508.342789244
#: GDAL rasters are at most 2^31 - 1 pixels wide: 256 px tiles at zoom 22 are 2^30.
MAX_ZOOM_256 = 22
#: GDAL virtual file systems that read over the network.
NETWORK_VSI = ("/vsicurl/", "/vsicurl_streaming/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/",
               "/vsiswift/", "/vsiwebhdfs/", "/vsihdfs/")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_XYZ_PLACEHOLDERS = {"x", "y", "-y", "z"}
_WEB_URL = re.compile(r"^(https?|ftp)://", re.IGNORECASE)


@dataclass(frozen=True)
class XyzSource:
    """An XYZ ("slippy map") tile service in EPSG:3857: `template` with {z}, {x} and {y} (or {-y}, rows
    counted from the south as in TMS); zooms `zmin`..`zmax`, `zmax` read at full resolution; tiles of
    `tile_pixels` px (256, or 512 for QGIS's tilePixelRatio=2). `referer`: the HTTP Referer some services ask."""

    template: str
    zmin: int
    zmax: int
    tile_pixels: int = 256
    referer: str = ""

    def record(self) -> str:
        """The canonical source: QGIS's XYZ layer URI (QGIS opens it with the 'wms' provider)."""
        fields = [("type", "xyz"), ("url", self.template), ("zmin", str(self.zmin)), ("zmax", str(self.zmax))]
        if self.tile_pixels != 256:
            fields.append(("tilePixelRatio", str(self.tile_pixels // 256)))
        if self.referer:
            fields.append(("referer", self.referer))
        return "&".join(f"{key}={quote(value, safe='/:')}" for key, value in fields)

    def gdal_xml(self) -> str:
        """GDAL's WMS-driver description (TMS mini-driver) of the service: the whole EPSG:3857 world at
        zoom `zmax` in blocks of one tile, with one overview per zoom down to `zmin`. Connections, time-outs
        and the user agent come from the GDAL configuration network_reads.py sets around every read."""
        url = self.template.replace("{z}", "${z}").replace("{x}", "${x}")
        y_origin = "bottom" if "{-y}" in url else "top"
        url = url.replace("{-y}", "${y}").replace("{y}", "${y}")
        h = repr(WEB_MERCATOR_HALF)
        referer = f"<Referer>{escape(self.referer)}</Referer>" if self.referer else ""
        return ("<GDAL_WMS>"
                f'<Service name="TMS"><ServerUrl>{escape(url)}</ServerUrl></Service>'
                f"<DataWindow><UpperLeftX>-{h}</UpperLeftX><UpperLeftY>{h}</UpperLeftY>"
                f"<LowerRightX>{h}</LowerRightX><LowerRightY>-{h}</LowerRightY>"
                f"<TileLevel>{self.zmax}</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
                f"<YOrigin>{y_origin}</YOrigin></DataWindow>"
                "<Projection>EPSG:3857</Projection>"
                f"<BlockSizeX>{self.tile_pixels}</BlockSizeX><BlockSizeY>{self.tile_pixels}</BlockSizeY>"
                f"<BandsCount>4</BandsCount><OverviewCount>{self.zmax - self.zmin}</OverviewCount>"
                f"{referer}</GDAL_WMS>")


def split_uri(text: str) -> Dict[str, str]:
    """{key: value} of a QGIS data-source URI `key=value&key=value` (values percent-decoded; '+' kept as is,
    unlike form decoding). A key given twice keeps its last value."""
    params: Dict[str, str] = {}
    for part in text.split("&"):
        key, sep, value = part.partition("=")
        if sep:
            params[unquote(key)] = unquote(value)
    return params


def is_xyz_template(text: str) -> bool:
    """True for a web URL with the {z}, {x} and {y} (or {-y}) placeholders of an XYZ tile service."""
    names = set(_PLACEHOLDER.findall(text))
    return bool(_WEB_URL.match(text)) and {"z", "x"} <= names and bool({"y", "-y"} & names)


def is_qgis_xyz_uri(text: str) -> bool:
    return text.startswith("type=xyz&") or "&type=xyz&" in text or text.endswith("&type=xyz")


def source_kind(source: str) -> str:
    """'xyz', 'wms', 'wmts', 'http' (a raster file read over the network), 'service-file' (a GDAL WMS/WMTS
    description file, as QGIS opens them with the 'gdal' provider) or 'file'."""
    if is_qgis_xyz_uri(source):
        return "xyz"
    if source[:4].upper() == "WMS:":
        return "wms"
    if source[:5].upper() == "WMTS:":
        return "wmts"
    if source.startswith(NETWORK_VSI):
        return "http"
    return "service-file" if _is_service_description(source) else "file"


def _is_service_description(path: str) -> bool:
    """True for a local `.xml` file holding a `<GDAL_WMS>` or `<GDAL_WMTS>` service description."""
    if not path.lower().endswith(".xml"):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(64).lstrip().startswith((b"<GDAL_WMS", b"<GDAL_WMTS"))
    except OSError:
        return False


def is_network_source(source: str) -> bool:
    """True when reading `source` means HTTP requests (anything but a local file)."""
    return source_kind(source) != "file"


def is_tile_service(source: str) -> bool:
    """True for web map services (XYZ, WMS, WMTS): they cover huge areas and need an extent."""
    return source_kind(source) in ("xyz", "wms", "wmts", "service-file")


def _int_param(params: Dict[str, str], key: str, default: int) -> int:
    value = params.get(key, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise RasterError(f"the XYZ source's {key}={value!r} is not a whole number; give e.g. {key}={default}") \
            from None


def check_xyz_template(template: str) -> None:
    """RasterError naming what is wrong with an XYZ URL template, if anything."""
    if not _WEB_URL.match(template):
        raise RasterError(f"the XYZ template '{template}' is not an http(s) URL; give the tile URL with {{z}}, "
                          "{x} and {y}, e.g. https://tile.example.org/{z}/{x}/{y}.png")
    names = set(_PLACEHOLDER.findall(template))
    unknown = sorted(names - _XYZ_PLACEHOLDERS)
    if unknown:
        raise RasterError(f"the XYZ template '{template}' has the placeholder {{{unknown[0]}}}, which QuickSAM "
                          "cannot fill (GDAL's TMS reader knows {z}, {x}, {y} and {-y}); use the service's "
                          "{z}/{x}/{y} URL")
    if not is_xyz_template(template):
        raise RasterError(f"the XYZ template '{template}' lacks {{z}}, {{x}} or {{y}}; give the tile URL with all "
                          "three, e.g. https://tile.example.org/{z}/{x}/{y}.png")


def xyz_source(template: str, zmin: int, zmax: int, zoom: Optional[int] = None, tile_pixels: int = 256,
               referer: str = "") -> XyzSource:
    """An XyzSource read at `zoom` (default `zmax`, the service's finest); RasterError when `zoom` is outside
    the service's zmin..zmax or beyond what GDAL can hold."""
    check_xyz_template(template)
    zoom = zmax if zoom is None else int(zoom)
    limit = MAX_ZOOM_256 - (tile_pixels // 256 - 1)
    if not 0 <= zmin <= zmax:
        raise RasterError(f"the XYZ source's zoom levels {zmin}..{zmax} are not a range; give zmin <= zmax")
    if not zmin <= zoom <= zmax:
        raise RasterError(f"zoom {zoom} is outside the zoom levels the service serves ({zmin}..{zmax}); "
                          f"choose a zoom between {zmin} and {zmax}")
    if zoom > limit:
        raise RasterError(f"zoom {zoom} makes a raster wider than GDAL can hold; choose a zoom of at most {limit}")
    return XyzSource(template=template, zmin=zmin, zmax=zoom, tile_pixels=tile_pixels, referer=referer)


def parse_xyz_uri(text: str, zoom: Optional[int] = None) -> XyzSource:
    """The XyzSource of a QGIS XYZ layer URI (`type=xyz&url=…&zmin=…&zmax=…`), read at `zoom` (default zmax)."""
    params = split_uri(text)
    ratio = _int_param(params, "tilePixelRatio", 1)
    return xyz_source(params.get("url", ""), _int_param(params, "zmin", 0), _int_param(params, "zmax", 18), zoom,
                      tile_pixels=256 * max(1, ratio),
                      referer=params.get("referer") or params.get("http-header:referer", ""))


def _url_query(url: str) -> Dict[str, str]:
    """{KEY (upper case): value} of a URL's query string."""
    return {key.upper(): value for key, value in split_uri(urlsplit(url).query).items()}


def check_wms(source: str) -> str:
    """A GDAL `WMS:` GetMap URL, checked: it must name LAYERS and give MINRESOLUTION (a WMS has no pixel
    size of its own). Returns it unchanged."""
    query = _url_query(source[4:])
    if not query.get("LAYERS"):
        raise RasterError(f"the WMS source '{source}' names no LAYERS; add &LAYERS=<layer name> (GDAL's WMS: "
                          "syntax, see docs/online-layers.md)")
    if not query.get("MINRESOLUTION"):
        raise RasterError("a WMS layer has no pixel size of its own: add &MINRESOLUTION=<map units per pixel> "
                          f"to '{source}' (GDAL's WMS: syntax), e.g. &MINRESOLUTION=0.5")
    return source


def _with_zoom(source: str, zoom: Optional[int]) -> str:
    """`source` read at `zoom`: XYZ (zmax) and WMTS (zoom_level); RasterError for other kinds."""
    kind = source_kind(source)
    if zoom is None:
        return source
    if kind == "xyz":
        return parse_xyz_uri(source, zoom).record()
    if kind == "wmts":
        kept = [part for part in source.split(",") if not part.lower().startswith("zoom_level=")]
        return ",".join(kept + [f"zoom_level={int(zoom)}"])
    raise RasterError("--zoom applies to tile services only (an XYZ template or layer, or a WMTS: source); "
                      f"'{source}' is not one: leave --zoom out")


def resolve_source(text: str, zoom: Optional[int] = None) -> str:
    """The canonical source (see the module docstring) of what the user gave: a path, a raster URL, an XYZ
    template (then `zoom` is required), a QGIS XYZ URI, or GDAL's `WMS:`/`WMTS:`/`/vsi…` strings.
    RasterError, one line saying what to do, when it cannot be read as one."""
    text = text.strip()
    if is_xyz_template(text) or (_WEB_URL.match(text) and "{" in text):
        if zoom is None:
            raise RasterError(f"'{text}' is an XYZ tile template: choose the zoom level to read with --zoom Z "
                              "(e.g. --zoom 17, about 1.2 m per pixel at the equator)")
        return xyz_source(text, 0, int(zoom)).record()
    if source_kind(text) == "wms":
        return _with_zoom(check_wms(text), zoom)
    if is_qgis_xyz_uri(text) or ("url=" in text and "layers=" in text and source_kind(text) == "file"):
        from .qgis_uris import is_qgis_wmts_uri, source_from_qgis_uri

        if not (is_qgis_xyz_uri(text) or is_qgis_wmts_uri(text)):
            raise RasterError("give a WMS layer as GDAL's WMS: URL with its BBOX and MINRESOLUTION (map units per "
                              "pixel), e.g. 'WMS:https://host/wms?LAYERS=ortho&SRS=EPSG:25832&BBOX=xmin,ymin,"
                              "xmax,ymax&MINRESOLUTION=0.5' (docs/online-layers.md)")
        return source_from_qgis_uri(text, zoom)
    if _WEB_URL.match(text):
        return _with_zoom("/vsicurl/" + text, zoom)
    return _with_zoom(text, zoom)


def source_pixel_size(source: str) -> Optional[float]:
    """Map units per pixel of a web map source as read (XYZ: its zmax; WMS: MINRESOLUTION); None otherwise."""
    kind = source_kind(source)
    if kind == "xyz":
        xyz = parse_xyz_uri(source)
        return 2 * WEB_MERCATOR_HALF / (xyz.tile_pixels * 2 ** xyz.zmax)
    if kind == "wms":
        try:
            return float(_url_query(source[4:]).get("MINRESOLUTION", ""))
        except ValueError:
            return None
    return None


def gdal_dataset(source: str) -> str:
    """The string GDAL opens for a canonical source (the TMS description for XYZ; anything else as is)."""
    if source_kind(source) == "xyz":
        return parse_xyz_uri(source).gdal_xml()
    return source


def recorded_source(source: str) -> str:
    """What the manifest records as `raster.path`: a local file's absolute path, any other source as is."""
    if source_kind(source) not in ("file", "service-file") or source.startswith("/vsi"):
        return source
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def source_host(source: str) -> str:
    """The host a network source talks to ('' for a local file), for messages."""
    kind = source_kind(source)
    if kind == "file":
        return ""
    if kind == "xyz":
        url = split_uri(source).get("url", "")
    elif kind in ("wms", "wmts"):
        url = source.split(":", 1)[1].split(",")[0]
    elif kind == "service-file":
        return _described_host(source)
    elif source.startswith(("/vsicurl/", "/vsicurl_streaming/")):
        url = source.split("/", 2)[2]
    else:  # a cloud store (/vsis3/bucket/...): its bucket
        url = "//" + source.split("/")[2]
    return urlsplit(url).hostname or "the server"


def _described_host(path: str) -> str:
    """The host of a GDAL service description file's ServerUrl or GetCapabilitiesUrl."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "the server"
    found = re.search(r"<(?:ServerUrl|GetCapabilitiesUrl)>\s*([^<\s]+)", text)
    return (urlsplit(found.group(1)).hostname if found else None) or "the server"


def source_stem(source: str) -> str:
    """A short file-name-safe name for a source (a store's default name): a file's stem; for a service its
    host and zoom or layer."""
    kind = source_kind(source)
    if kind in ("file", "service-file"):
        return Path(source.rstrip("/")).stem or "raster"
    if kind == "http":
        return Path(urlsplit(source.split("/", 2)[2]).path.rstrip("/")).stem or "raster"
    if kind == "xyz":
        label = f"{source_host(source)}-z{parse_xyz_uri(source).zmax}"
    elif kind == "wms":
        label = f"{source_host(source)}-{_url_query(source[4:]).get('LAYERS', 'wms')}"
    else:
        options = dict(part.split("=", 1) for part in source.split(",")[1:] if "=" in part)
        label = f"{source_host(source)}-{options.get('layer', 'wmts')}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "service"


def network_fingerprint(source: str, width: int, height: int, count: int,
                        geotransform: Sequence[float]) -> str:
    """The fingerprint of a network source, from its description and structure only: reading pixels over the
    network to hash them would cost requests (and a service's pixels may change without notice). The same
    source at the same zoom, size and georeference gives the same fingerprint."""
    structure = (int(width), int(height), int(count), tuple(float(v) for v in geotransform))
    described = source
    if source_kind(source) == "service-file":  # the description, wherever the file lies
        described = Path(source).read_text(encoding="utf-8", errors="replace")
    digest = hashlib.sha256()
    digest.update(repr(("network", source_kind(source), described, structure)).encode())
    return digest.hexdigest()


def require_extent(source: str, size: Tuple[int, int], crs_name: str,
                   extent: Optional[Tuple[float, float, float, float]]) -> None:
    """RasterError when a web map service (XYZ, WMS, WMTS) is to be encoded without an extent: it covers the
    whole area of its service (for XYZ the world, `size` (width, height) px at the chosen zoom)."""
    if extent is None and is_tile_service(source):
        raise RasterError(
            f"{source_host(source)} serves a web map of {size[0]} x {size[1]} px at this resolution: give the area "
            f"to encode with --extent xmin,ymin,xmax,ymax (in {crs_name}, or add --extent-crs EPSG:4326 for "
            "degrees)")


def extent_in_raster_crs(source: str, extent: Tuple[float, float, float, float],
                         crs: str) -> Tuple[float, float, float, float]:
    """`extent` (xmin, ymin, xmax, ymax in `crs`, e.g. "EPSG:4326") as the bounding box of its outline in the
    CRS of the raster `source` (its edges densified, so a curved outline stays inside). Opens the source's
    description only (for a web service no tile is fetched). RasterError for a CRS GDAL does not know."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_bounds

    from .raster import describe_raster

    try:
        source_crs = CRS.from_user_input(crs)
    except (CRSError, ValueError):
        raise RasterError(f"--extent-crs '{crs}' is not a CRS GDAL knows; give e.g. EPSG:4326") from None
    info = describe_raster(source)
    return tuple(transform_bounds(source_crs, CRS.from_wkt(info.crs_wkt), *extent, densify_pts=21))
