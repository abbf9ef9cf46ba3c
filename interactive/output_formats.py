"""Vector output files: the format chosen by the file's extension, the checks made before a run, and
writing QuickSAM's layer into a file without touching anything else in it.

GDAL/OGR only (no QGIS, no pyogrio/fiona): `quicksam segment`, `quicksam segment-all` and the algorithm
quicksam:segmentall write through here, inside QGIS's process or not.

Formats (`FORMATS`), each with its limits handled:
- GeoPackage `.gpkg`: a container. Only QuickSAM's layer (default `segments`) is added or replaced, in
  one transaction; every other layer of the file is kept.
- Shapefile `.shp`: field names of at most 10 characters (`short_field_names`; QuickSAM's own names all
  fit, the longest, `checkpoint`, has exactly 10), one geometry type per file (QuickSAM writes
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

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from ..core.diskspace import folder_unwritable_reason
from ..core.errors import QuickSamError
from .gdal_errors import with_gdal_return_codes

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

    with _quiet_gdal():
        if fmt is None:
            dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR)
        else:
            dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR, allowed_drivers=[fmt.driver])
    if dataset is None:
        return None
    return [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]


def _can_add_layer(path: Path, fmt: VectorFormat) -> bool:
    """Whether GDAL can open the existing file `path` for update and create a layer in it."""
    from osgeo import gdal, ogr

    with _quiet_gdal():
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=[fmt.driver])
        return dataset is not None and bool(dataset.TestCapability(ogr.ODsCCreateLayer))


def _existing_files(path: Path, fmt: VectorFormat) -> List[Path]:
    """The files of the dataset `path` that exist (a Shapefile's .shp, .shx, .dbf, .prj, .cpg, ...)."""
    from osgeo import gdal

    with _quiet_gdal():
        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR, allowed_drivers=[fmt.driver])
    files = [Path(name) for name in (dataset.GetFileList() or [])] if dataset is not None else []
    if fmt.driver == "ESRI Shapefile":  # also parts left without a .shp
        files += [path.with_suffix(end) for end in (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")]
    files.append(path)
    unique = list(dict.fromkeys(file.absolute() for file in files))
    return [file for file in unique if file.is_file()]


@with_gdal_return_codes
def check_destination(path: Path, layer: str, overwrite: bool, what: str = "--output",
                      overwrite_hint: str = "(or pass --overwrite)",
                      layer_hint: str = "choose another --layer") -> Destination:
    """The destination of a run, checked before any work. QuickSamError (one line) when the extension or
    layer name is unusable, the folder is missing or read-only, or the output exists and overwrite is
    not asked for: a single-layer file that exists, or a multi-layer file that already has `layer`. A
    multi-layer file without `layer` gets it added, overwrite or not; one GDAL cannot open is a file
    like any other (replaced only with overwrite)."""
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
                                f"{overwrite_hint}")
        if not _can_add_layer(path, fmt):
            raise QuickSamError(f"GDAL's {fmt.driver} driver cannot add a layer to the existing file '{path}'; "
                                "choose a new file name")
    elif _existing_files(path, fmt) and not overwrite:
        raise QuickSamError(f"'{path}' exists; choose another name or delete it {overwrite_hint}")
    if not fmt.tried:
        _try_format(fmt)
    return Destination(path, fmt, layer)


# -- writing ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WrittenLayer:
    """What a write did: the file, the layer written (None for a single-layer file) and the file's other
    layers, which were kept as they were."""

    path: Path
    layer: Optional[str]
    kept_layers: Tuple[str, ...] = ()

    def message(self) -> str:
        """One line for people: which layer went where, and what was kept."""
        if self.layer is None:
            return f"wrote '{self.path}'"
        kept = f"; its other layers ({', '.join(self.kept_layers)}) are kept" if self.kept_layers else ""
        return f"wrote layer '{self.layer}' into '{self.path}'{kept}"


@contextlib.contextmanager
def _quiet_gdal() -> Iterator[None]:
    """GDAL's error messages kept from stderr (their text is read with gdal.GetLastErrorMsg)."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def _gdal_error(action: str) -> QuickSamError:
    from osgeo import gdal

    detail = " ".join((gdal.GetLastErrorMsg() or "").split()).rstrip(".")
    return QuickSamError(f"{action}{': ' + detail if detail else ''}")


def _target_srs(source_srs, destination: Destination):
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


def epsg_code(srs) -> Optional[int]:
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
        _target_srs(srs, Destination(path, fmt, DEFAULT_LAYER))


def _create_fields(target, source_defn, fmt: VectorFormat) -> None:
    """The fields of `source_defn` in `target`, renamed for `fmt` (`short_field_names`). Shapefile columns
    have a fixed width: OGR widens a text column for a longer value (up to dBASE's 254 bytes) and drops
    decimals of a number that would not fit its 24 characters with 15 decimals."""
    from osgeo import ogr

    names = [source_defn.GetFieldDefn(i).GetName() for i in range(source_defn.GetFieldCount())]
    for index, name in enumerate(short_field_names(names, fmt.max_field_name)):
        source_field = source_defn.GetFieldDefn(index)
        field = ogr.FieldDefn(name, source_field.GetType())
        field.SetWidth(source_field.GetWidth())
        field.SetPrecision(source_field.GetPrecision())
        if target.CreateField(field) != 0:
            raise _gdal_error(f"cannot create the field '{name}' in the {fmt.name} output")


def _copy_features(source, target, fmt: VectorFormat) -> int:
    """Every feature of `source` into `target` (fields by position, geometry as MultiPolygon); the count."""
    from osgeo import ogr

    defn = target.GetLayerDefn()
    field_map = list(range(defn.GetFieldCount()))
    count = 0
    source.ResetReading()
    for feature in source:
        out = ogr.Feature(defn)
        if out.SetFromWithMap(feature, 1, field_map) != 0:
            raise _gdal_error(f"cannot copy the attributes of object {count + 1} into the {fmt.name} output")
        geometry = feature.GetGeometryRef()
        if geometry is not None:
            out.SetGeometry(ogr.ForceToMultiPolygon(geometry.Clone()))
        if target.CreateFeature(out) != 0:
            raise _gdal_error(f"cannot write object {count + 1} to the {fmt.name} output")
        count += 1
    return count


def _create_layer(dataset, name: str, source, destination: Destination):
    from osgeo import ogr

    fmt = destination.format
    options = list(fmt.layer_options)
    if fmt.driver == "GPKG":
        options += ["FID=fid", "GEOMETRY_NAME=geom"]
    layer = dataset.CreateLayer(name, _target_srs(source.GetSpatialRef(), destination), ogr.wkbMultiPolygon, options)
    if layer is None:
        raise _gdal_error(f"cannot create the layer '{name}' in '{destination.path}'")
    _create_fields(layer, source.GetLayerDefn(), fmt)
    return layer


@contextlib.contextmanager
def _transaction(dataset) -> Iterator[None]:
    """All inside committed together where the format has transactions (GeoPackage, SQLite), else as is."""
    from osgeo import ogr

    if not dataset.TestCapability(ogr.ODsCTransactions) or dataset.StartTransaction() != 0:
        yield
        return
    try:
        yield
    except BaseException:
        dataset.RollbackTransaction()
        raise
    if dataset.CommitTransaction() != 0:
        raise _gdal_error("cannot commit the output")


def _open_source(source: Path, source_layer: str):
    from osgeo import gdal

    dataset = gdal.OpenEx(str(source), gdal.OF_VECTOR)
    layer = dataset.GetLayerByName(source_layer) if dataset is not None else None
    if layer is None:
        raise QuickSamError(f"'{source}' has no layer '{source_layer}' to write")
    return dataset, layer


@with_gdal_return_codes
def write_layer(source: Path, source_layer: str, destination: Destination, overwrite: bool) -> WrittenLayer:
    """Write the polygon layer `source_layer` of the vector file `source` to `destination`.

    A multi-layer file that exists gets the layer added, or replaced with `overwrite` (in one transaction
    where the format has them: a failure leaves the file as it was); its other layers are kept. Otherwise
    a new file is written beside the output and moved into place, replacing an existing one only with
    `overwrite`. Coordinates are not transformed (they stay in the source layer's CRS). QuickSamError
    (one line) when the destination refuses the layer."""
    with _quiet_gdal():
        source_dataset, layer = _open_source(source, source_layer)
        try:
            path, fmt = destination.path, destination.format
            if fmt.multi_layer and layer_names(path, fmt) is not None:
                return _write_into(layer, destination, overwrite)
            if _existing_files(path, fmt) and not overwrite:
                raise QuickSamError(f"'{path}' exists; choose another name or delete it")
            _write_new_file(layer, destination)
            return WrittenLayer(path, destination.reported_layer)
        finally:
            del layer, source_dataset  # closes the source file


def _write_into(source, destination: Destination, overwrite: bool) -> WrittenLayer:
    """Add (or replace) the layer in the existing multi-layer file, keeping its other layers."""
    from osgeo import gdal, ogr

    path, name = destination.path, destination.layer
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=[destination.format.driver])
    if dataset is None:
        raise _gdal_error(f"GDAL cannot add a layer to '{path}' (its {destination.format.name} driver cannot "
                          "update files, or the file is read-only); choose a new file")
    names = [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]
    existing = [i for i, other in enumerate(names) if other.lower() == name.lower()]
    if existing and not overwrite:
        raise QuickSamError(f"'{path}' already has a layer '{name}'")
    if existing and not dataset.TestCapability(ogr.ODsCDeleteLayer):
        raise QuickSamError(f"GDAL cannot replace the layer '{name}' of '{path}'; choose another layer name")
    kept = tuple(other for i, other in enumerate(names) if i not in existing)
    temporary = _free_name(names, f"quicksam_writing_{os.getpid()}")
    try:
        with _transaction(dataset):
            target = _create_layer(dataset, temporary, source, destination)
            _copy_features(source, target, destination.format)
            renamable = target.TestCapability(getattr(ogr, "OLCRename", "Rename"))
            for index in sorted(existing, reverse=True):
                if dataset.DeleteLayer(index) != 0:
                    raise _gdal_error(f"cannot replace the layer '{name}' of '{path}'")
            if renamable:
                if target.Rename(name) != 0:
                    raise _gdal_error(f"cannot name the new layer '{name}' in '{path}'")
            else:  # the format cannot rename: copy once more under the final name
                final = _create_layer(dataset, name, source, destination)
                _copy_features(source, final, destination.format)
                dataset.DeleteLayer(_layer_index(dataset, temporary))
    except BaseException:
        target = final = None  # noqa: F841
        dataset = None  # after a rollback only reopening shows the file as it is
        _drop_layer_if_left(path, destination.format, temporary)
        raise
    target = final = None  # noqa: F841
    dataset.FlushCache()
    dataset = None
    return WrittenLayer(path, name, kept)


def _free_name(names: Sequence[str], base: str) -> str:
    lower = {name.lower() for name in names}
    candidate, number = base, 0
    while candidate.lower() in lower:
        number += 1
        candidate = f"{base}_{number}"
    return candidate


def _layer_index(dataset, name: str) -> int:
    return [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())].index(name)


def _drop_layer_if_left(path: Path, fmt: VectorFormat, name: str) -> None:
    """Remove our temporary layer if a format without transactions kept it after a failure."""
    from osgeo import gdal

    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=[fmt.driver])
    if dataset is not None and name in [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]:
        dataset.DeleteLayer(_layer_index(dataset, name))
    dataset = None


def _write_new_file(source, destination: Destination) -> None:
    """Write the whole file in a private folder beside the output, then move its files into place (each
    move replaces a file atomically) and remove what is left of an old dataset of that name."""
    from osgeo import gdal

    path, fmt = destination.path, destination.format
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.writing-", dir=path.parent))
    try:
        target_path = work / path.name
        driver = gdal.GetDriverByName(fmt.driver)
        dataset = driver.Create(str(target_path), 0, 0, 0, gdal.GDT_Unknown, list(fmt.dataset_options))
        if dataset is None:
            raise _gdal_error(f"cannot create the {fmt.name} file '{path}'")
        name = path.stem if fmt.driver == "ESRI Shapefile" else destination.layer
        with _transaction(dataset):
            target = _create_layer(dataset, name, source, destination)
            _copy_features(source, target, fmt)
        target = None
        gdal.ErrorReset()
        dataset = None  # closing writes what some formats hold back (FlatGeobuf's index, Shapefile's sizes)
        if gdal.GetLastErrorType() >= gdal.CE_Failure:
            raise _gdal_error(f"cannot finish the {fmt.name} file '{path}'")
        old = _existing_files(path, fmt)
        new = sorted(work.iterdir())
        for item in new:
            os.replace(item, path.parent / item.name)
        for item in old:
            if item.name not in {n.name for n in new}:
                item.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@with_gdal_return_codes
def _try_format(fmt: VectorFormat) -> None:
    """Write and read back one polygon with an integer, a real and a text field in `fmt` (an OGR format
    QuickSAM's tests do not cover); QuickSamError naming what it loses, before any work is done."""
    from osgeo import gdal, ogr, osr

    with tempfile.TemporaryDirectory(prefix="quicksam-format-") as folder, _quiet_gdal():
        path = Path(folder) / f"trial{fmt.extensions[0]}"
        memory = ogr.GetDriverByName("Memory").CreateDataSource("trial")
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633)
        layer = memory.CreateLayer(DEFAULT_LAYER, srs, ogr.wkbMultiPolygon)
        for name, kind in (("id", ogr.OFTInteger64), ("score", ogr.OFTReal), ("checkpoint", ogr.OFTString)):
            layer.CreateField(ogr.FieldDefn(name, kind))
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(
            "MULTIPOLYGON (((500000 4200000,500010 4200000,500010 4199990,500000 4200000)))"))
        for name, value in (("id", 1), ("score", 0.5), ("checkpoint", "abc")):
            feature[name] = value
        layer.CreateFeature(feature)
        problem = None
        try:
            dataset = gdal.GetDriverByName(fmt.driver).Create(str(path), 0, 0, 0, gdal.GDT_Unknown)
            if dataset is None:
                raise _gdal_error("cannot create a file")
            target = dataset.CreateLayer(DEFAULT_LAYER, srs, ogr.wkbMultiPolygon)
            if target is None:
                raise _gdal_error("cannot create a polygon layer")
            _create_fields(target, layer.GetLayerDefn(), fmt)
            _copy_features(layer, target, fmt)
            target = dataset = None
            back = gdal.OpenEx(str(path), gdal.OF_VECTOR)
            read = back.GetLayer(0) if back is not None and back.GetLayerCount() else None
            first = read.GetNextFeature() if read is not None else None
            geometry = first.GetGeometryRef() if first is not None else None
            if geometry is None or ogr.GT_Flatten(geometry.GetGeometryType()) not in (ogr.wkbPolygon,
                                                                                       ogr.wkbMultiPolygon):
                problem = "does not keep the polygons"
            elif read.GetLayerDefn().GetFieldCount() < 3:
                problem = "does not keep the attributes"
        except QuickSamError as exc:
            problem = str(exc)
        if problem:
            raise QuickSamError(f"GDAL's {fmt.driver} driver ({fmt.extensions[0]}) {problem}, so QuickSAM's polygons "
                                f"cannot be written there; write one of {accepted_formats()} instead")
