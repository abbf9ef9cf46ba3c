"""Writing QuickSAM's layer into a vector file without touching anything else in it, and the trial write of a
format QuickSAM's tests do not cover (GDAL/OGR's own bindings; no QGIS). See output_formats.py for the formats
and what each keeps."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Tuple

from ..core.errors import QuickSamError
from .gdal_errors import with_gdal_return_codes
from .vector_formats import (
    DEFAULT_LAYER,
    Destination,
    VectorFormat,
    accepted_formats,
    existing_files,
    gdal_error,
    layer_names,
    quiet_gdal,
    short_field_names,
    target_srs,
)

if TYPE_CHECKING:
    from osgeo import gdal, ogr


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


def create_fields(target: ogr.Layer, source_defn: ogr.FeatureDefn, fmt: VectorFormat) -> None:
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
            raise gdal_error(f"cannot create the field '{name}' in the {fmt.name} output")


def copy_features(source: ogr.Layer, target: ogr.Layer, fmt: VectorFormat) -> int:
    """Every feature of `source` into `target` (fields by position, geometry as MultiPolygon); the count."""
    from osgeo import ogr

    defn = target.GetLayerDefn()
    field_map = list(range(defn.GetFieldCount()))
    count = 0
    source.ResetReading()
    for feature in source:
        out = ogr.Feature(defn)
        if out.SetFromWithMap(feature, 1, field_map) != 0:
            raise gdal_error(f"cannot copy the attributes of object {count + 1} into the {fmt.name} output")
        geometry = feature.GetGeometryRef()
        if geometry is not None:
            out.SetGeometry(ogr.ForceToMultiPolygon(geometry.Clone()))
        if target.CreateFeature(out) != 0:
            raise gdal_error(f"cannot write object {count + 1} to the {fmt.name} output")
        count += 1
    return count


def _create_layer(dataset: gdal.Dataset, name: str, source: ogr.Layer, destination: Destination) -> ogr.Layer:
    from osgeo import ogr

    fmt = destination.format
    options = list(fmt.layer_options)
    if fmt.driver == "GPKG":
        options += ["FID=fid", "GEOMETRY_NAME=geom"]
    layer = dataset.CreateLayer(name, target_srs(source.GetSpatialRef(), destination), ogr.wkbMultiPolygon, options)
    if layer is None:
        raise gdal_error(f"cannot create the layer '{name}' in '{destination.path}'")
    create_fields(layer, source.GetLayerDefn(), fmt)
    return layer


@contextlib.contextmanager
def _transaction(dataset: gdal.Dataset) -> Iterator[None]:
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
        raise gdal_error("cannot commit the output")


def _open_source(source: Path, source_layer: str) -> Tuple[gdal.Dataset, ogr.Layer]:
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
    with quiet_gdal():
        source_dataset, layer = _open_source(source, source_layer)
        try:
            path, fmt = destination.path, destination.format
            if fmt.multi_layer and layer_names(path, fmt) is not None:
                return _write_into(layer, destination, overwrite)
            if existing_files(path, fmt) and not overwrite:
                raise QuickSamError(f"'{path}' exists; choose another name or delete it")
            _write_new_file(layer, destination)
            return WrittenLayer(path, destination.reported_layer)
        finally:
            del layer, source_dataset  # closes the source file


def _write_into(source: ogr.Layer, destination: Destination, overwrite: bool) -> WrittenLayer:
    """Add (or replace) the layer in the existing multi-layer file, keeping its other layers."""
    from osgeo import gdal, ogr

    path, name = destination.path, destination.layer
    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=[destination.format.driver])
    if dataset is None:
        raise gdal_error(f"GDAL cannot add a layer to '{path}' (its {destination.format.name} driver cannot "
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
            copy_features(source, target, destination.format)
            renamable = target.TestCapability(getattr(ogr, "OLCRename", "Rename"))
            for index in sorted(existing, reverse=True):
                if dataset.DeleteLayer(index) != 0:
                    raise gdal_error(f"cannot replace the layer '{name}' of '{path}'")
            if renamable:
                if target.Rename(name) != 0:
                    raise gdal_error(f"cannot name the new layer '{name}' in '{path}'")
            else:  # the format cannot rename: copy once more under the final name
                final = _create_layer(dataset, name, source, destination)
                copy_features(source, final, destination.format)
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


def _layer_index(dataset: gdal.Dataset, name: str) -> int:
    return [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())].index(name)


def _drop_layer_if_left(path: Path, fmt: VectorFormat, name: str) -> None:
    """Remove our temporary layer if a format without transactions kept it after a failure."""
    from osgeo import gdal

    dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE, allowed_drivers=[fmt.driver])
    if dataset is not None and name in [dataset.GetLayer(i).GetName() for i in range(dataset.GetLayerCount())]:
        dataset.DeleteLayer(_layer_index(dataset, name))
    dataset = None


def _write_new_file(source: ogr.Layer, destination: Destination) -> None:
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
            raise gdal_error(f"cannot create the {fmt.name} file '{path}'")
        name = path.stem if fmt.driver == "ESRI Shapefile" else destination.layer
        with _transaction(dataset):
            target = _create_layer(dataset, name, source, destination)
            copy_features(source, target, fmt)
        target = None
        gdal.ErrorReset()
        dataset = None  # closing writes what some formats hold back (FlatGeobuf's index, Shapefile's sizes)
        if gdal.GetLastErrorType() >= gdal.CE_Failure:
            raise gdal_error(f"cannot finish the {fmt.name} file '{path}'")
        old = existing_files(path, fmt)
        new = sorted(work.iterdir())
        for item in new:
            os.replace(item, path.parent / item.name)
        for item in old:
            if item.name not in {n.name for n in new}:
                item.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@with_gdal_return_codes
def try_format(fmt: VectorFormat) -> None:
    """Write and read back one polygon with an integer, a real and a text field in `fmt` (an OGR format
    QuickSAM's tests do not cover); QuickSamError naming what it loses, before any work is done."""
    from osgeo import gdal, ogr, osr

    with tempfile.TemporaryDirectory(prefix="quicksam-format-") as folder, quiet_gdal():
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
                raise gdal_error("cannot create a file")
            target = dataset.CreateLayer(DEFAULT_LAYER, srs, ogr.wkbMultiPolygon)
            if target is None:
                raise gdal_error("cannot create a polygon layer")
            create_fields(target, layer.GetLayerDefn(), fmt)
            copy_features(layer, target, fmt)
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


def remove_gpkg(path: Path) -> None:
    """Delete the GeoPackage `path` and its SQLite companions (-wal, -shm, -journal), those that exist."""
    for item in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm", "-journal"))):
        with contextlib.suppress(FileNotFoundError):
            item.unlink()
