"""The run file of segment everything: the GeoPackage OUT.partial.gpkg beside the output (OUT without its
extension) in which a run collects its objects, with the run's identity, the finished tiles and the staged
pieces (GDAL/OGR's own bindings + numpy; no QGIS).

A tile's objects, its staged pieces and the merge step it allows are committed in one transaction
(`RunFile.transaction`), so a killed run resumes where it stopped without duplicates. The run file is
also the `border_merge.Staging` of the streamed merge: staged masks wait in a table, packed to bits.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Collection,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

import numpy as np

from ..core.errors import QuickSamError
from .gdal_errors import with_gdal_return_codes
from .object_fields import LEVEL_FACTOR, PREDICTED_IOU, SEGMENT_ALL_FIELDS, crs_srs
from .output_formats import PYTHON_OVERWRITE, layer_names, remove_gpkg
from .tile_merge import TileMask
from .vectorise import Polygons

if TYPE_CHECKING:
    from osgeo import gdal, ogr

#: The run file's layer of objects (written to the output when the run ends).
OBJECTS_LAYER = "segments"
RUN_TABLE = "quicksam_run"
TILE_TABLE = "quicksam_tiles"
STAGED_TABLE = "quicksam_staged"


def partial_path(output: Path) -> Path:
    """Where the run builds `output` (and keeps what it needs to resume)."""
    return output.with_name(output.stem + ".partial.gpkg")


def differing_settings(stored: Mapping[str, object], current: Mapping[str, object]) -> List[str]:
    """The keys, sorted, whose values differ between the settings an earlier run recorded and this run's (a key
    only one has counts); a nested mapping (a run identity's `settings`) by its own keys, `settings.<key>`. The
    one comparison that refuses to resume (RunFile.open) or take as finished (the segment-all batch) a run made
    with other settings."""
    differing: List[str] = []
    for key in sorted(set(stored) | set(current)):
        old, new = stored.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differing.extend(f"{key}.{inner}" for inner in differing_settings(old, new))
        elif old != new:
            differing.append(key)
    return differing


class GdalFailures:
    """GDAL's failure messages on this thread while active. With GDAL's exceptions off, as QGIS leaves them,
    an OGR write that fails (a full disk: "database or disk is full") only returns a code and reports
    through the error handler; unchecked, the run would go on and mark tiles done whose objects were lost."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def __call__(self, error_class: int, error_number: int, message: str) -> None:
        from osgeo import gdal

        if error_class >= gdal.CE_Failure:
            self.messages.append(str(message))

    def __enter__(self) -> GdalFailures:
        from osgeo import gdal

        gdal.PushErrorHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        from osgeo import gdal

        gdal.PopErrorHandler()

    def raise_if_any(self, path: Path) -> None:
        """QuickSamError with GDAL's first failure, if there was one."""
        if self.messages:
            raise QuickSamError(f"cannot write '{path}': {self.messages[0]}")


def _ogr_type(kind: str) -> int:
    from osgeo import ogr

    return {"int64": ogr.OFTInteger64, "real": ogr.OFTReal, "str": ogr.OFTString, "int": ogr.OFTInteger,
            "bin": ogr.OFTBinary}[kind]


class RunFile:
    """The partial GeoPackage: output layer, run parameters, finished tiles and staged masks."""

    def __init__(self, path: Path, dataset: gdal.Dataset) -> None:
        self.path = path
        self.dataset = dataset
        self.segments = dataset.GetLayerByName(OBJECTS_LAYER)
        self.tiles = dataset.GetLayerByName(TILE_TABLE)
        self.staged_layer = dataset.GetLayerByName(STAGED_TABLE)
        #: GDAL's failures while a transaction is open (see `transaction` and `_check`).
        self._failures: Optional[GdalFailures] = None

    @classmethod
    def create(cls, path: Path, crs_wkt: str, identity: dict) -> RunFile:
        """A new run file; on failure (a full disk) none is left behind and QuickSamError says why."""
        with GdalFailures() as failures:
            run = None
            try:
                run = cls._create(path, crs_wkt, identity)
                failures.raise_if_any(path)
                return run
            except Exception as exc:
                if run is not None:
                    run.close()
                with contextlib.suppress(OSError):
                    remove_gpkg(path)
                if failures.messages and not isinstance(exc, QuickSamError):
                    failures.raise_if_any(path)
                raise

    @classmethod
    def _create(cls, path: Path, crs_wkt: str, identity: dict) -> RunFile:
        from osgeo import ogr

        dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
        if dataset is None:
            raise QuickSamError(f"cannot create '{path}'; check that the folder is writable")
        layer = dataset.CreateLayer(OBJECTS_LAYER, crs_srs(crs_wkt), ogr.wkbMultiPolygon,
                                    ["FID=fid", "GEOMETRY_NAME=geom"])
        for name, kind in SEGMENT_ALL_FIELDS:
            layer.CreateField(ogr.FieldDefn(name, _ogr_type(kind)))
        run = dataset.CreateLayer(RUN_TABLE, None, ogr.wkbNone)
        run.CreateField(ogr.FieldDefn("identity", ogr.OFTString))
        feature = ogr.Feature(run.GetLayerDefn())
        feature["identity"] = json.dumps(identity, sort_keys=True)
        run.CreateFeature(feature)
        tiles = dataset.CreateLayer(TILE_TABLE, None, ogr.wkbNone)
        tiles.CreateField(ogr.FieldDefn("tile_id", ogr.OFTString))
        staged = dataset.CreateLayer(STAGED_TABLE, None, ogr.wkbNone)
        for name, kind in (("tile_id", "str"), ("kind", "str"), ("col0", "int"), ("row0", "int"), ("width", "int"),
                           ("height", "int"), ("score", "real"), ("stability", "real"), ("bits", "bin")):
            staged.CreateField(ogr.FieldDefn(name, _ogr_type(kind)))
        dataset.ExecuteSQL(f"CREATE INDEX {STAGED_TABLE}_by_tile ON {STAGED_TABLE} (kind, tile_id)")
        dataset.FlushCache()
        return cls(path, dataset)

    @classmethod
    def open(cls, path: Path, identity: dict, how_to_overwrite: str = PYTHON_OVERWRITE) -> RunFile:
        from osgeo import gdal

        dataset = gdal.OpenEx(str(path), gdal.OF_VECTOR | gdal.OF_UPDATE)
        run = dataset.GetLayerByName(RUN_TABLE) if dataset is not None else None
        if run is None or dataset.GetLayerByName(TILE_TABLE) is None:
            raise QuickSamError(_not_a_run_file(path))
        stored = json.loads([feature["identity"] for feature in run][0])  # read to the end: no open statement
        differing = differing_settings(stored, json.loads(json.dumps(identity, sort_keys=True)))
        if differing:
            raise QuickSamError(f"'{path}' holds an unfinished run with other settings ({', '.join(differing)}); "
                                f"run again with the same settings to resume it, or {how_to_overwrite} to start "
                                "again")
        return cls(path, dataset)

    def object_count(self, joined: bool = False) -> int:
        """Objects written so far (`joined`: only those put together from pieces of several tiles)."""
        return self._count(OBJECTS_LAYER, "tile_ids LIKE '%,%'" if joined else None)

    def _count(self, table: str, where: Optional[str] = None) -> int:
        """The rows of `table` (matching `where`), counted by SQLite: not GDAL's cached feature count, which a
        transaction rolled back on a full disk can leave wrong."""
        result = self.dataset.ExecuteSQL(f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else ""))
        count = next(iter(result)).GetField(0)
        self.dataset.ReleaseResultSet(result)
        return int(count)

    def finished_tiles(self) -> set:
        return {feature["tile_id"] for feature in self.tiles}

    def next_id(self) -> int:
        result = self.dataset.ExecuteSQL(f"SELECT MAX(id) FROM {OBJECTS_LAYER}")
        value = next(iter(result)).GetField(0)
        self.dataset.ReleaseResultSet(result)
        return int(value or 0) + 1

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside is committed together, or not at all: a write that GDAL reports as failed (a
        full disk) rolls it back and raises QuickSamError with GDAL's words."""
        with GdalFailures() as failures:
            self._failures = failures
            self.dataset.StartTransaction()
            try:
                yield
                failures.raise_if_any(self.path)
                committed = self.dataset.CommitTransaction() in (0, None)
                failures.raise_if_any(self.path)
                if not committed:
                    raise QuickSamError(f"cannot write '{self.path}': the transaction was not committed")
            except BaseException:
                with contextlib.suppress(RuntimeError):  # SQLite may have rolled back already
                    self.dataset.RollbackTransaction()
                raise
            finally:
                self._failures = None

    def _check(self) -> None:
        """Stop at anything GDAL reported as failed since the transaction began; called before and after
        every write. At once: on a full disk SQLite may roll the whole transaction back by itself (also in
        statements GDAL runs for its own bookkeeping while a layer is read), and every write after that would
        be committed on its own: a tile marked done whose pieces were lost."""
        if self._failures is not None:
            self._failures.raise_if_any(self.path)

    def write_objects(self, objects: Sequence[Tuple[Polygons, dict]]) -> None:
        from osgeo import ogr

        self._check()
        for polygons, attributes in objects:
            feature = ogr.Feature(self.segments.GetLayerDefn())
            feature.SetGeometry(ogr.CreateGeometryFromWkb(polygons.wkb))
            for name, value in attributes.items():
                feature[name] = value
            self.segments.CreateFeature(feature)
            self._check()

    def mark_done(self, tile_id: str) -> None:
        from osgeo import ogr

        self._check()
        marker = ogr.Feature(self.tiles.GetLayerDefn())
        marker["tile_id"] = tile_id
        self.tiles.CreateFeature(marker)
        self._check()

    # -- the objects again, for the merge across levels (level_merge.py) --------------------------------
    def object_records(self) -> List[Tuple[int, float, float, Tuple[float, float, float, float]]]:
        """(FID, level_factor, predicted_iou, (xmin, ymin, xmax, ymax) in map units) of every object."""
        records = []
        for feature in self.segments:
            xmin, xmax, ymin, ymax = feature.GetGeometryRef().GetEnvelope()
            records.append((feature.GetFID(), feature[LEVEL_FACTOR], feature[PREDICTED_IOU], (xmin, ymin, xmax, ymax)))
        return records

    def object_geometry(self, fid: int) -> ogr.Geometry:
        """The polygons of the object `fid` (map units of the raster's CRS)."""
        feature = self.segments.GetFeature(int(fid))  # held: its geometry is freed with it
        return feature.GetGeometryRef().Clone()

    def delete_objects(self, fids: Iterable[int]) -> None:
        """Delete the objects `fid`s and number the others 1, 2, ... again in their order (ids stay 1..n)."""
        self._check()
        for fid in fids:
            self.segments.DeleteFeature(int(fid))
            self._check()
        # Plain SQLite (no UPDATE ... FROM, 3.33+, nor window functions): a temporary table numbers the FIDs in
        # id order through its own INTEGER PRIMARY KEY, 1, 2, ...
        for statement in ("CREATE TEMP TABLE quicksam_numbered (n INTEGER PRIMARY KEY, f INTEGER UNIQUE)",
                          f"INSERT INTO quicksam_numbered (f) SELECT fid FROM {OBJECTS_LAYER} ORDER BY id",
                          f"UPDATE {OBJECTS_LAYER} SET id = (SELECT n FROM quicksam_numbered WHERE f = "
                          f"{OBJECTS_LAYER}.fid)", "DROP TABLE quicksam_numbered"):
            self.dataset.ExecuteSQL(statement)
            self._check()

    # -- border_merge.Staging: staged masks wait in a table, packed to bits ------------------------------
    def stage(self, kind: str, masks: Iterable[TileMask]) -> None:
        from osgeo import ogr

        self._check()
        for mask in masks:
            feature = ogr.Feature(self.staged_layer.GetLayerDefn())
            for name, value in (("tile_id", mask.tile_id), ("kind", kind), ("col0", mask.col0), ("row0", mask.row0),
                                ("width", mask.crop.shape[1]), ("height", mask.crop.shape[0]),
                                ("score", mask.score), ("stability", mask.stability)):
                feature[name] = value
            feature.SetFieldBinaryFromHexString("bits", np.packbits(mask.crop).tobytes().hex())
            self.staged_layer.CreateFeature(feature)
            self._check()

    def staged(self, kind: str, tile_ids: Collection[str]) -> Dict[int, TileMask]:
        found: Dict[int, TileMask] = {}
        ids = sorted(tile_ids)
        for start in range(0, len(ids), 500):
            chunk = _sql_list(ids[start:start + 500])
            self.staged_layer.SetAttributeFilter(f"kind = '{kind}' AND tile_id IN ({chunk})")
            for feature in self.staged_layer:
                found[feature.GetFID()] = _staged_mask(feature)
        self.staged_layer.SetAttributeFilter(None)
        return found

    def tiles_with(self, kind: str) -> Set[str]:
        result = self.dataset.ExecuteSQL(f"SELECT DISTINCT tile_id FROM {STAGED_TABLE} WHERE kind = '{kind}'")
        tiles = {feature.GetField(0) for feature in result}
        self.dataset.ReleaseResultSet(result)
        return tiles

    def unstage(self, keys: Iterable[int]) -> None:
        self._check()
        for key in keys:
            self.staged_layer.DeleteFeature(int(key))
            self._check()

    def unstage_tiles(self, kind: str, tile_ids: Collection[str]) -> None:
        self._check()
        ids = sorted(tile_ids)
        for start in range(0, len(ids), 500):
            self.dataset.ExecuteSQL(f"DELETE FROM {STAGED_TABLE} WHERE kind = '{kind}' AND "
                                    f"tile_id IN ({_sql_list(ids[start:start + 500])})")
            self._check()

    def staged_count(self) -> int:
        if self.staged_layer is None:  # dropped by a finish that a full disk stopped: every tile was done
            return 0
        return self._count(STAGED_TABLE)

    def close(self) -> None:
        self.segments = self.tiles = self.staged_layer = None
        self.dataset = None


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


def _staged_mask(feature: ogr.Feature) -> TileMask:
    height, width = feature["height"], feature["width"]
    bits = np.frombuffer(feature.GetFieldAsBinary("bits"), np.uint8)
    crop = np.unpackbits(bits)[:height * width].reshape(height, width).astype(bool)
    return TileMask(feature["tile_id"], feature["col0"], feature["row0"], crop, feature["score"], feature["stability"])


def _not_a_run_file(path: Path) -> str:
    return (f"'{path}' is not a QuickSAM run in progress, but a stopped run would be kept under that name; move or "
            "rename that file, or choose another output name")


@with_gdal_return_codes
def remove_run_file(path: Path) -> None:
    """Delete the run file `path` to start again; QuickSamError, deleting nothing, when it holds anything
    but a run's own tables (a user's file that happens to have the name)."""
    names = layer_names(path)
    if names is None or not set(names) <= {OBJECTS_LAYER, RUN_TABLE, TILE_TABLE, STAGED_TABLE} \
            or RUN_TABLE not in names:
        raise QuickSamError(_not_a_run_file(path))
    remove_gpkg(path)
