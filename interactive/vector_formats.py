"""The vector formats QuickSAM writes, chosen by a file's extension, and what each can hold: field names,
the CRS, layers (GDAL/OGR's own bindings; no QGIS, no pyogrio/fiona). output_formats.py describes the formats
and is where callers import from; vector_writing.py writes a layer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

from ..core.errors import QuickSamError
from .gdal_errors import with_gdal_return_codes

if TYPE_CHECKING:
    from osgeo import osr

DEFAULT_LAYER = "segments"
#: Table name prefixes the GeoPackage and SQLite specifications reserve.
_RESERVED_PREFIXES = ("gpkg_", "rtree_", "sqlite_")


@dataclass(frozen=True)
class VectorFormat:
    """A vector format QuickSAM writes: its name for users, its OGR driver and what it can hold.

    extensions: lower case, with the dot; multi_layer: a file holds several layers (only ours is
    replaced); max_field_name: longest field name in characters (None: no limit QuickSAM meets);
    epsg_crs: the CRS is stated by an EPSG code only (GeoJSON); tried: QuickSAM's tests write and read
    this format (False for other OGR formats, which get a trial write first).
    """

    name: str
    driver: str
    extensions: Tuple[str, ...]
    multi_layer: bool
    max_field_name: Optional[int] = None
    dataset_options: Tuple[str, ...] = ()
    layer_options: Tuple[str, ...] = ()
    epsg_crs: bool = False
    tried: bool = True

    def available(self) -> bool:
        from osgeo import ogr

        return ogr.GetDriverByName(self.driver) is not None

    def label(self) -> str:
        return f"{'/'.join(self.extensions)} ({self.name})"


FORMATS: Tuple[VectorFormat, ...] = (
    VectorFormat("GeoPackage", "GPKG", (".gpkg",), True),
    VectorFormat("Shapefile", "ESRI Shapefile", (".shp",), False, max_field_name=10,
                 layer_options=("ENCODING=UTF-8", "RESIZE=YES")),
    VectorFormat("GeoJSON", "GeoJSON", (".geojson", ".json"), False, layer_options=("RFC7946=NO",),
                 epsg_crs=True),
    VectorFormat("FlatGeobuf", "FlatGeobuf", (".fgb",), False),
    VectorFormat("GeoParquet", "Parquet", (".parquet",), False),
)


def accepted_formats() -> str:
    """The formats this GDAL lets QuickSAM write, for messages: '.gpkg (GeoPackage), .shp (Shapefile), ...'."""
    return ", ".join(fmt.label() for fmt in FORMATS if fmt.available())


def _other_ogr_format(extension: str) -> Optional[VectorFormat]:
    """The first OGR driver of this GDAL that creates vector files with `extension` (as ogr2ogr picks)."""
    from osgeo import gdal

    for index in range(gdal.GetDriverCount()):
        driver = gdal.GetDriver(index)
        metadata = driver.GetMetadata() or {}
        if metadata.get("DCAP_VECTOR") != "YES" or metadata.get("DCAP_CREATE") != "YES":
            continue
        extensions = (metadata.get("DMD_EXTENSIONS") or metadata.get("DMD_EXTENSION") or "").lower().split()
        if extension.lstrip(".") in extensions:
            return VectorFormat(metadata.get("DMD_LONGNAME") or driver.ShortName, driver.ShortName, (extension,),
                                metadata.get("DCAP_MULTIPLE_VECTOR_LAYERS") == "YES", tried=False)
    return None


@with_gdal_return_codes
def format_for(path: Path, what: str = "the output") -> VectorFormat:
    """The format of `path`, by its extension (any case). QuickSamError (one line) for an extension no
    driver of this GDAL writes, listing what is accepted, and for a listed format whose driver is missing."""
    from osgeo import gdal

    extension = Path(path).suffix.lower()
    for fmt in FORMATS:
        if extension in fmt.extensions:
            if not fmt.available():
                raise QuickSamError(
                    f"{what} '{path}': {fmt.name} ({extension}) needs GDAL's {fmt.driver} driver, which this GDAL "
                    f"{gdal.__version__} does not have; write one of {accepted_formats()} instead")
            return fmt
    other = _other_ogr_format(extension) if extension else None
    if other is None:
        raise QuickSamError(
            f"{what} '{path}' has {'the unknown extension ' + repr(extension) if extension else 'no extension'}; "
            f"end it in one of {accepted_formats()}, or in the extension of another vector format GDAL writes "
            "(e.g. .kml, .gml, .sqlite)")
    return other


def check_layer_name(layer: str) -> str:
    """`layer` if it can name a table in any of the formats; QuickSamError otherwise."""
    if not layer or not layer.strip() or layer != layer.strip() or any(ord(c) < 32 for c in layer):
        raise QuickSamError(f"the layer name {layer!r} is empty or has spaces at its ends or control "
                            "characters; give a plain name such as segments")
    if layer.lower().startswith(_RESERVED_PREFIXES):
        raise QuickSamError(f"the layer name '{layer}' starts with {', '.join(_RESERVED_PREFIXES)} (reserved for "
                            "the file's own tables); choose another name")
    return layer


def short_field_names(names: Sequence[str], limit: Optional[int]) -> List[str]:
    """Unique field names of at most `limit` characters, in order: names that fit are kept; a longer
    name is cut to `limit` characters, and if that is taken, to fewer, ending in _1, _2, ... (the first
    free). The same names always give the same result. Shapefile: limit 10."""
    if limit is None:
        return list(names)
    result: List[str] = []
    taken = {name.lower() for name in names if len(name) <= limit}
    for name in names:
        if len(name) <= limit:
            result.append(name)
            continue
        candidate, number = name[:limit], 0
        while candidate.lower() in taken:
            number += 1
            suffix = f"_{number}"
            candidate = name[:limit - len(suffix)] + suffix
        taken.add(candidate.lower())
        result.append(candidate)
    return result


@dataclass(frozen=True)
class Destination:
    """Where a layer goes: an absolute `path`, its format and the layer name (used by multi-layer
    formats; GeoJSON and FlatGeobuf store it as the layer's name; a Shapefile's layer is its file name)."""

    path: Path
    format: VectorFormat
    layer: str

    @property
    def reported_layer(self) -> Optional[str]:
        """The layer to name in messages: ours in a multi-layer file; None when the file is the layer."""
        return self.layer if self.format.multi_layer else None


@with_gdal_return_codes
def layer_names(path: Path, fmt: Optional[VectorFormat] = None) -> Optional[List[str]]:
    """The layers of the vector file `path`, or None if GDAL cannot open it (as `fmt`, if given)."""
    from osgeo import gdal

    with quiet_gdal():
        if fmt is None:
            dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
        else:
            dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR, allowed_drivers=[fmt.driver])
    if dataset is None:
        return None
    return [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]


def existing_files(path: Path, fmt: VectorFormat) -> List[Path]:
    """The files of the dataset `path` that exist (a Shapefile's .shp, .shx, .dbf, .prj, .cpg, ...)."""
    from osgeo import gdal

    with quiet_gdal():
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR, allowed_drivers=[fmt.driver])
    files = [Path(name) for name in (dataset.GetFileList() or [])] if dataset is not None else []
    if fmt.driver == "ESRI Shapefile":  # also parts left without a .shp
        files += [path.with_suffix(end) for end in (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")]
    files.append(path)
    unique = list(dict.fromkeys(file.absolute() for file in files))
    return [file for file in unique if file.is_file()]


@contextlib.contextmanager
def quiet_gdal() -> Iterator[None]:
    """GDAL's error messages kept from stderr (their text is read with gdal.GetLastErrorMsg)."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def gdal_error(action: str) -> QuickSamError:
    from osgeo import gdal

    detail = " ".join((gdal.GetLastErrorMsg() or "").split()).rstrip(".")
    return QuickSamError(f"{action}{': ' + detail if detail else ''}")


def target_srs(source_srs: Optional[osr.SpatialReference],
               destination: Destination) -> Optional[osr.SpatialReference]:
    """The CRS to give the written layer: the source's, or for GeoJSON the same CRS by its EPSG code."""
    from osgeo import osr

    if source_srs is None or not destination.format.epsg_crs:
        return source_srs
    code = epsg_code(source_srs)
    if code is None:
        raise QuickSamError(f"the raster's CRS ({source_srs.GetName()}) has no EPSG code, so a "
                            f"{destination.format.name} file cannot state it; write {destination.path.stem}.gpkg or "
                            ".fgb instead (they keep any CRS)")
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(code)
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def epsg_code(srs: osr.SpatialReference) -> Optional[int]:
    """The EPSG code of an osr.SpatialReference: its own, or that of an EPSG CRS it matches exactly
    (confidence 100 %, as PROJ judges); None if there is none."""
    if (srs.GetAuthorityName(None) or "").upper() == "EPSG" and srs.GetAuthorityCode(None):
        return int(srs.GetAuthorityCode(None))
    for match, confidence in srs.FindMatches() or []:
        if confidence == 100 and (match.GetAuthorityName(None) or "").upper() == "EPSG":
            return int(match.GetAuthorityCode(None))
    return None


@with_gdal_return_codes
def check_crs(fmt: VectorFormat, crs_wkt: str, path: Path) -> None:
    """QuickSamError before a run when `fmt` cannot state the CRS `crs_wkt` (GeoJSON: no EPSG code)."""
    from osgeo import osr

    srs = osr.SpatialReference()
    if crs_wkt and srs.ImportFromWkt(crs_wkt) == 0:
        target_srs(srs, Destination(path, fmt, DEFAULT_LAYER))
