"""The feature store: one folder per encoding, the contract between the encoder and the decoder.

Layout (docs/store-format.md; file names in core/store_layout.py):

    STORE/
      manifest.json      what produced the features (core/manifest.py: typed records, format version 2;
                         version 1 is read too)
      tiles.jsonl        append-only log, one line per finished tile (core/tile_log.py)
      tiles/<id>.npy     one flat float16 (or float32) array per tile, all feature maps back to back
                         (offsets in the manifest); plain .npy, never pickled (core/tile_files.py); version 4
                         (features.codec): a flat uint8 .npy of their compressed payload (core/tile_codec.py)
      tiles/<id>.valid.npy  the tile's valid-pixel mask packed to bits, only for tiles with nodata inside
                         the raster; its CRC-32 is the log line's `valid_crc32`
      decoder.onnx       prompt encoder + mask decoder for these features
      tile_index.gpkg    tile footprints (id, row, col, status) for QGIS
      .quicksam.lock     only while `quicksam encode` writes the store: its lock, naming the process

Every file is written to a temporary name in the same folder (NAME.PID.tmp) and renamed into place.
Nothing outside the store folder is ever written or deleted. No QGIS, no torch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from .errors import StoreError
from .locking import STORE_LOCK
from .manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ArrayLayout,
    Manifest,
    feature_layout,
    read_manifest,
    write_manifest,
)
from .manifest_checks import DECODER_SETTING_TYPES, ManifestProblem, validate_manifest
from .manifest_resume import describe_difference
from .remote_store import RemoteTileWriter, remote_tile_check, remote_writer_for
from .store_layout import DECODER_ONNX, MANIFEST, TILE_DIR, TILE_INDEX, TILE_LOG, VALID_MASK_SUFFIX
from .tile_files import TileDamage, crc32_of, map_tile_file, read_packed_mask, temporary_path, tile_values
from .tile_log import (
    LOGGED_STATUSES,
    STATUS_DAMAGED,
    STATUS_DONE,
    STATUS_NODATA,
    STATUS_PENDING,
    TileRecord,
    append_record,
    read_tile_log,
    tile_record_from_json,
    truncate_torn_line,
)
from .tile_writer import TileWriter, nodata_record, tile_file, valid_mask_file
from .tiling import Tile

#: Names other modules import from here (the store's one door); defined in the modules named above.
__all__ = ["DECODER_ONNX", "DECODER_SETTING_TYPES", "FORMAT_NAME", "FORMAT_VERSION", "LOGGED_STATUSES", "MANIFEST",
           "STATUS_DAMAGED", "STATUS_DONE", "STATUS_NODATA", "STATUS_PENDING", "TILE_DIR", "TILE_INDEX", "TILE_LOG",
           "VALID_MASK_SUFFIX", "ArrayLayout", "FeatureStore", "Manifest", "ManifestProblem", "TileRecord",
           "feature_layout", "temporary_path", "tile_record_from_json", "validate_manifest"]


class FeatureStore:
    """A feature store folder. Use `create_or_resume` to write, `open` to read.

    `manifest` is the typed manifest (core/manifest.py); `grid` its tile grid (raster pixels), `layout` the
    feature maps of a tile file and `dtype` their numpy type.
    """

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = Path(root)
        self._use_manifest(manifest)
        self._records: Optional[Dict[str, TileRecord]] = None
        self._verified: set = set()
        #: Tiles logged done whose file failed `verify_tiles`: id -> what is wrong.
        self._damaged: Dict[str, str] = {}

    def _use_manifest(self, manifest: Manifest) -> None:
        """What the rest of the class reads from the manifest."""
        self.manifest: Manifest = manifest
        self.grid = manifest.grid
        self.layout: List[ArrayLayout] = list(manifest.features.arrays)
        self.dtype = np.dtype(manifest.features.dtype)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path) -> FeatureStore:
        """Open an existing store for reading (a version-1 manifest is converted in memory, never
        rewritten); StoreError saying what is wrong otherwise: not a store folder, a damaged manifest
        (naming the key), a newer format ("update QuickSAM"), a damaged tile log line."""
        root = Path(root)
        if root.is_file():
            raise StoreError(f"'{root}' is a file, not a QuickSAM feature store folder. If it is a raster, "
                             "encode it first: quicksam encode RASTER STORE (or Processing > QuickSAM > "
                             "Encode raster)")
        if not (root / MANIFEST).is_file():
            raise StoreError(f"'{root}' is not a QuickSAM feature store (no {MANIFEST}); choose the folder "
                             "that 'quicksam encode' wrote, or encode the raster into a new folder")
        store = cls(root, read_manifest(root))
        store.records()   # a damaged tile log is reported on opening, not at the first tile
        return store

    @classmethod
    def create_or_resume(cls, root: Path, manifest: Manifest) -> FeatureStore:
        """Start a new store in an empty or missing folder (its manifest stamped `created` and written in
        this QuickSAM's format version), or resume one made with the same settings (kept in its own format
        version, see `describe_difference`).

        Refuses (StoreError) a folder that holds anything else, and a store made differently.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"'{root}' exists and is not a folder; choose a new folder for the store")
        if (root / MANIFEST).is_file():
            store = cls.open(root)
            difference = describe_difference(store.manifest, manifest)
            if difference:
                raise StoreError(f"'{root}' already holds a store made differently ({difference}); "
                                 "choose another output folder, or delete that store yourself to redo it")
            store.discard_partial_writes()
            return store
        if root.is_dir() and any(entry.name != STORE_LOCK for entry in root.iterdir()):
            raise StoreError(f"'{root}' is not empty and is not a QuickSAM store; choose an empty or new "
                             "folder (QuickSAM never overwrites other files)")
        (root / TILE_DIR).mkdir(parents=True, exist_ok=True)
        manifest = dataclasses.replace(manifest, format_version=FORMAT_VERSION, created=_dt.datetime.now(
            _dt.timezone.utc).isoformat(timespec="seconds"))
        write_manifest(root, manifest)
        return cls(root, manifest)

    def update_manifest(self, manifest: Manifest) -> None:
        """Replace the manifest (atomically) once the model has filled in the feature layout; written in
        `manifest.format_version` (a version-1 store stays version 1, readable by older QuickSAMs)."""
        write_manifest(self.root, manifest)
        self._use_manifest(manifest)

    def discard_partial_writes(self) -> None:
        """Remove temporary files and a torn last log line left by a killed run (only inside this store)."""
        leftovers = [*(self.root / TILE_DIR).glob("*.tmp"), *self.root.glob("*.tmp"),
                     *self.root.glob("tile_index.tmp.*.gpkg*")]
        for tmp in leftovers:
            tmp.unlink()
        if truncate_torn_line(self.root):
            self._records = None

    # -- identity ----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.manifest.model.name

    @property
    def family(self) -> str:
        """The model family: "sam2" or "sam1"."""
        return self.manifest.model.family

    @property
    def image_size(self) -> int:
        """The model's input side (= tile size), pixels."""
        return self.manifest.model.image_size

    @property
    def checkpoint_sha256(self) -> Optional[str]:
        return self.manifest.checkpoint.sha256

    @property
    def crs_wkt(self) -> str:
        """The raster's CRS (WKT): the CRS of every map coordinate of this store."""
        return self.manifest.raster.crs_wkt

    @property
    def geotransform(self) -> Tuple[float, ...]:
        """GDAL's geotransform of the store's level (core/levels.py; the raster's own at factor 1): pixel
        (col, row) of the grid -> map (x, y) in `crs_wkt`."""
        return self.manifest.pixel_grid.geotransform

    @property
    def feature_names(self) -> List[str]:
        return self.manifest.features.names

    @property
    def feature_shapes(self) -> Dict[str, Tuple[int, int, int]]:
        """(C, H, W) of each feature map, by name, in file order."""
        return self.manifest.features.shapes

    # -- tile log ----------------------------------------------------------------------------------
    def records(self) -> Dict[str, TileRecord]:
        """Finished tiles by id, read from the log once; the last line of a tile wins (a tile encoded
        again appends a line). StoreError naming the line for a line that is not a record of this
        store's grid, except a torn last line (no newline: a killed run's), which is ignored."""
        if self._records is None:
            self._records = self._read_tile_log()
        return self._records

    def _read_tile_log(self) -> Dict[str, TileRecord]:
        return read_tile_log(self.root, {tile.tile_id for tile in self.grid})

    def _append_record(self, record: TileRecord) -> None:
        append_record(self.root, record)
        self.records()[record.tile_id] = record

    def status(self, tile: Tile) -> str:
        """done, nodata, pending, or damaged (logged done, failed `verify_tiles`)."""
        if tile.tile_id in self._damaged:
            return STATUS_DAMAGED
        record = self.records().get(tile.tile_id)
        return record.status if record else STATUS_PENDING

    def pending_tiles(self) -> List[Tile]:
        """Tiles to encode: never encoded, or found damaged by `verify_tiles`."""
        return [tile for tile in self.grid if self.status(tile) in (STATUS_PENDING, STATUS_DAMAGED)]

    def verify_tiles(self, tiles: Optional[Iterable[Tile]] = None) -> Dict[str, str]:
        """Check the file of every tile logged done (or of those in `tiles`): present, a .npy of the
        manifest's dtype and length, of the right byte size, and its CRC-32 equal to the log's (read once
        per process; about 8 MB per 1024 px SAM 2 tile). Damaged tiles have status 'damaged' and are
        pending until written again. Returns {tile_id: what is wrong}. A working copy of a store on an object store
        checks each tile's objects by existence and size only (core/remote_store.py)."""
        found = {}
        remote_check = remote_tile_check(self.root, self.layout, self.dtype, self.manifest.features.codec)
        for tile in self.grid if tiles is None else tiles:
            record = self.records().get(tile.tile_id)
            if record is None or record.status != STATUS_DONE:
                continue
            problem = (remote_check(tile, record) if remote_check is not None
                       else self.tile_problem(tile.tile_id) or self._valid_mask_problem(tile, record))
            if problem is not None:
                found[tile.tile_id] = problem
        self._damaged.update(found)
        return found

    def decoder_problem(self) -> Optional[str]:
        """None when decoder.onnx loads in ONNX Runtime and its inputs fit this store's tiles, else what is
        wrong ("is missing", ...). QuickSamError when ONNX Runtime is not installed."""
        from .decoder_file import decoder_file_problem

        return decoder_file_problem(self.root / DECODER_ONNX, self.feature_shapes, self.image_size)

    # -- tile features -----------------------------------------------------------------------------
    def tile_path(self, tile_id: str) -> Path:
        return tile_file(self.root, tile_id)

    def tile_writer(self) -> Union[TileWriter, RemoteTileWriter]:
        """What writes this store's tile files without logging them (core/tile_writer.py; a Dask worker's); for a
        working copy of a store on an object store, the writer into the object store (core/remote_store.py)."""
        codec = self.manifest.features.codec
        return (remote_writer_for(self.root, self.layout, self.dtype.name, codec)
                or TileWriter(self.root, tuple(self.layout), self.dtype.name, codec))

    def record(self, record: TileRecord) -> None:
        """Append a tile's record to the log once its files are written (`TileWriter`); the tile is then done
        (or nodata), no longer damaged, and its CRC taken of the bytes written."""
        self._append_record(record)
        self._damaged.pop(record.tile_id, None)
        if record.status == STATUS_DONE:
            self._verified.add(record.tile_id)

    def write_tile(self, tile: Tile, features: Dict[str, np.ndarray], valid_fraction: float,
                   valid_crc32: Optional[int] = None) -> None:
        """Store one tile's feature maps (atomic: temp file + rename, then a log line). `valid_crc32` is
        what `write_valid_mask` returned for the tile (written before, so the log line comes last)."""
        self.record(self.tile_writer().write_features(tile, features, valid_fraction, valid_crc32))

    def mark_nodata(self, tile: Tile) -> None:
        """Record a tile with no valid pixel: it is skipped, no features are stored."""
        self.record(nodata_record(tile))

    def load_tile(self, tile_id: str) -> Dict[str, np.ndarray]:
        """(C, H, W) feature maps of a finished tile: memory-mapped (raw tiles), or decoded (a codec's: float16
        or float32 as stored, float32 for int8); checked against its CRC the first time. StoreError naming the
        tile's file if it is missing, truncated or corrupt."""
        record = self.records().get(tile_id)
        if record is None or record.status != STATUS_DONE:
            state = "has no features (all nodata)" if record else "was not encoded"
            raise StoreError(f"tile {tile_id} of store '{self.root}' {state}; re-run the same "
                             "'quicksam encode' command to finish the store")
        try:
            flat = tile_values(self._checked_tile(tile_id), self.dtype.name, self.manifest.features.codec,
                               [item.shape for item in self.layout])
        except TileDamage as exc:
            raise StoreError(f"tile {tile_id} of store '{self.root}' is damaged: {self._tile_file(tile_id)} {exc}; "
                             "re-run the same 'quicksam encode' command to encode it again, or encode the raster "
                             "again into a new folder") from None
        return {item.name: flat[item.offset:item.offset + item.size].reshape(item.shape)
                for item in self.layout}

    # -- valid-pixel masks -----------------------------------------------------------------------------
    def valid_mask_path(self, tile_id: str) -> Path:
        return valid_mask_file(self.root, tile_id)

    def write_valid_mask(self, tile: Tile, valid: np.ndarray) -> Optional[int]:
        """Keep a tile's valid-pixel mask as `tiles/<id>.valid.npy` (`TileWriter.write_valid_mask`). Call before
        `write_tile`; returns the CRC-32 for its `valid_crc32`, or None when nothing was written."""
        return self.tile_writer().write_valid_mask(tile, valid)

    def load_valid_mask(self, tile: Tile) -> np.ndarray:
        """(size, size) bool, True where the tile has data (raster pixel (tile.col_off + col,
        tile.row_off + row) at [row, col]); padding beyond the raster's edge is False.

        A nodata tile is all False. A done tile without a recorded mask (every pixel inside the raster
        valid, or a store written before masks were kept) is True inside the raster. StoreError naming
        the tile when it is not encoded or its mask file is missing, the wrong size or corrupt.
        """
        record = self.records().get(tile.tile_id)
        if record is None or record.status not in (STATUS_DONE, STATUS_NODATA):
            raise StoreError(f"tile {tile.tile_id} of store '{self.root}' was not encoded; re-run the same "
                             "'quicksam encode' command to finish the store")
        inside = np.zeros((tile.size, tile.size), dtype=bool)
        if record.status == STATUS_NODATA:
            return inside
        inside[:tile.valid_height, :tile.valid_width] = True
        if record.valid_crc32 is None:
            return inside
        packed = self._read_packed_mask(tile, record.valid_crc32)
        return np.unpackbits(packed, count=tile.size * tile.size).reshape(tile.size, tile.size).astype(bool) & inside

    def _read_packed_mask(self, tile: Tile, crc32: int) -> np.ndarray:
        """The packed mask bytes of a tile, checked for size, type and CRC (StoreError naming the tile)."""
        return read_packed_mask(self.valid_mask_path(tile.tile_id), tile.size, crc32,
                                f"the valid-pixel mask of tile {tile.tile_id} of store '{self.root}'")

    def _valid_mask_problem(self, tile: Tile, record: TileRecord) -> Optional[str]:
        """None when the tile keeps no valid-pixel mask or its mask file is intact, else what is wrong."""
        if record.valid_crc32 is None:
            return None
        try:
            self._read_packed_mask(tile, record.valid_crc32)
        except StoreError as exc:
            return str(exc)
        return None

    def tile_problem(self, tile_id: str) -> Optional[str]:
        """None when the file of a tile logged done is intact (see `verify_tiles`), else what is wrong."""
        try:
            self._checked_tile(tile_id)
        except TileDamage as exc:
            return f"{self._tile_file(tile_id)} {exc}"
        return None

    def _tile_file(self, tile_id: str) -> str:
        return f"{TILE_DIR}/{self.tile_path(tile_id).name}"

    def _checked_tile(self, tile_id: str) -> np.ndarray:
        """The tile file's flat memory-mapped array (a codec's: its uint8 payload) after a header and size check
        and (once) its CRC-32; TileDamage otherwise."""
        flat = map_tile_file(self.tile_path(tile_id), self.dtype, sum(item.size for item in self.layout),
                             self.manifest.features.codec is not None)
        if tile_id not in self._verified:
            if crc32_of(flat) != self.records()[tile_id].crc32:
                raise TileDamage(f"does not match its CRC-32 in {TILE_LOG} (the file is corrupt)")
            self._verified.add(tile_id)
        return flat

    # -- summary -----------------------------------------------------------------------------------
    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def summary(self) -> dict:
        """What `quicksam info` prints. Verifies every tile (`verify_tiles`) and the decoder: `complete`
        only when no tile is pending or damaged and the decoder (and its split parts, if any) loads and fits."""
        from .decoder_file import store_split_files_problem

        damaged = self.verify_tiles()
        decoder_problem = self.decoder_problem() or store_split_files_problem(self.root, self.feature_shapes)
        counts: Dict[str, int] = {}
        for tile in self.grid:
            status = self.status(tile)
            counts[status] = counts.get(status, 0) + 1
        raster = self.manifest.raster
        return {
            "store": str(self.root),
            "model": self.model_name,
            "random_weights": self.manifest.model.random_weights,
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint": self.manifest.checkpoint.name,
            "crs": raster.crs_name,
            "raster": raster.path,
            "raster_size": [raster.width, raster.height],
            "bands": list(self.manifest.preprocessing.bands),
            "level_factor": self.manifest.pixel_grid.factor, "resolution": self.manifest.pixel_grid.resolution,
            "tile_size": self.grid.tile_size,
            "overlap": self.grid.overlap,
            "tiles": len(self.grid),
            "tiles_done": counts.get(STATUS_DONE, 0),
            "tiles_nodata": counts.get(STATUS_NODATA, 0),
            "tiles_pending": counts.get(STATUS_PENDING, 0),
            "tiles_damaged": len(damaged),
            "damaged_tiles": damaged,
            "decoder_problem": decoder_problem,
            "complete": counts.get(STATUS_PENDING, 0) == 0 and not damaged and decoder_problem is None,
            "feature_dtype": str(self.dtype),
            "bytes_on_disk": self.bytes_on_disk(),
        }
