"""The feature store: one folder per encoding, the contract between the encoder and the decoder.

Layout (format version 1, see docs/store-format.md):

    STORE/
      manifest.json      what produced the features: model, checkpoint SHA-256, preprocessing and
                         stretch, raster path + fingerprint, CRS (WKT), geotransform, tile grid
      tiles.jsonl        append-only log, one line per finished tile: id, status, CRC-32
      tiles/<id>.npy     one flat float16 (or float32) array per tile, all feature maps back to back
                         (offsets in the manifest); plain .npy, memory-mapped, never pickled
      decoder.onnx       prompt encoder + mask decoder for these features
      tile_index.gpkg    tile footprints (id, row, col, status) for QGIS
      .quicksam.lock     only while `quicksam encode` writes the store: its lock, naming the process

Every file is written to a temporary name in the same folder (NAME.PID.tmp) and renamed into place.
Nothing outside the store folder is ever written or deleted. No QGIS, no torch.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .errors import StoreError
from .locking import STORE_LOCK
from .tiling import Tile, TileGrid

FORMAT_NAME = "quicksam-feature-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TILE_LOG = "tiles.jsonl"
TILE_DIR = "tiles"
DECODER_ONNX = "decoder.onnx"
TILE_INDEX = "tile_index.gpkg"
STATUS_DONE = "done"
STATUS_NODATA = "nodata"
STATUS_PENDING = "pending"
#: Manifest fields that must be equal for a run to resume into an existing store.
RESUME_KEYS = (
    ("model", "name"), ("model", "image_size"), ("model", "random_weights"), ("model", "seed"),
    ("checkpoint", "sha256"), ("raster", "fingerprint"), ("preprocessing", "bands"),
    ("preprocessing", "stretch_mode"), ("features", "dtype"), ("grid",),
)


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: NAME.PID.tmp, so that no two processes ever
    share a temporary (a resume removes every *.tmp, which it may only do while it holds the store's lock)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)  # a half-written file would only hold space (a full disk) until the next resume
        raise


def atomic_write_json(path: Path, data: dict) -> None:
    _atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode())


@dataclass(frozen=True)
class ArrayLayout:
    """Where one feature map sits in a tile file: (C, H, W) starting at element `offset`."""

    name: str
    shape: Tuple[int, int, int]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def feature_layout(specs: Iterable[Tuple[str, Tuple[int, int, int]]]) -> List[ArrayLayout]:
    layout, offset = [], 0
    for name, shape in specs:
        item = ArrayLayout(name, tuple(int(v) for v in shape), offset)
        layout.append(item)
        offset += item.size
    return layout


@dataclass(frozen=True)
class TileRecord:
    """One line of the tile log."""

    tile_id: str
    status: str
    crc32: Optional[int] = None
    valid_fraction: float = 1.0


def _value_at(data: dict, keys: Tuple[str, ...]):
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def describe_difference(existing: dict, wanted: dict) -> Optional[str]:
    """The first resume-relevant manifest field that differs, said plainly, or None."""
    labels = {"fingerprint": "raster contents", "sha256": "checkpoint", "name": "model",
              "grid": "tile grid (overlap, extent or tile size)"}
    for keys in RESUME_KEYS:
        old, new = _value_at(existing, keys), _value_at(wanted, keys)
        if keys == ("checkpoint", "sha256") and new is None:
            continue  # random weights: identified by model, seed and size, hashed once built
        if old != new:
            label = labels.get(keys[-1], ".".join(keys))
            if keys == ("grid",):
                return f"{label} differs"
            return f"{label}: store has {old!r}, this run has {new!r}"
    return None


class FeatureStore:
    """A feature store folder. Use `create_or_resume` to write, `open` to read."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self._use_manifest(manifest)
        self._records: Optional[Dict[str, TileRecord]] = None
        self._verified: set = set()

    def _use_manifest(self, manifest: dict) -> None:
        """What the rest of the class reads from the manifest."""
        self.manifest = manifest
        self.grid = TileGrid.from_dict(manifest["grid"])
        self.layout = [ArrayLayout(a["name"], tuple(a["shape"]), a["offset"])
                       for a in manifest["features"]["arrays"]]
        self.dtype = np.dtype(manifest["features"]["dtype"])

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path) -> FeatureStore:
        """Open an existing store for reading; StoreError saying what is wrong otherwise."""
        root = Path(root)
        manifest_path = root / MANIFEST
        if root.is_file():
            raise StoreError(f"'{root}' is a file, not a QuickSAM feature store folder. If it is a raster, "
                             "encode it first: quicksam encode RASTER STORE (or Processing > QuickSAM > "
                             "Encode raster)")
        if not manifest_path.is_file():
            raise StoreError(f"'{root}' is not a QuickSAM feature store (no {MANIFEST}); choose the folder "
                             "that 'quicksam encode' wrote, or encode the raster into a new folder")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"the manifest of store '{root}' is unreadable ({exc}); encode the raster "
                             "again into a new folder") from exc
        if manifest.get("format") != FORMAT_NAME:
            raise StoreError(f"'{manifest_path}' is not a QuickSAM manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"store '{root}' has format version {version!r}, this QuickSAM reads version "
                             f"{FORMAT_VERSION}; encode the raster again with this version")
        return cls(root, manifest)

    @classmethod
    def create_or_resume(cls, root: Path, manifest: dict) -> FeatureStore:
        """Start a new store in an empty or missing folder, or resume one made with the same settings.

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
        manifest = dict(manifest, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        atomic_write_json(root / MANIFEST, manifest)
        return cls(root, manifest)

    def update_manifest(self, manifest: dict) -> None:
        """Replace the manifest (atomically) once the model has filled in the feature layout."""
        atomic_write_json(self.root / MANIFEST, manifest)
        self._use_manifest(manifest)

    def discard_partial_writes(self) -> None:
        """Remove temporary files and a torn last log line left by a killed run (only inside this store)."""
        leftovers = [*(self.root / TILE_DIR).glob("*.tmp"), *self.root.glob("*.tmp"),
                     *self.root.glob("tile_index.tmp.*.gpkg*")]
        for tmp in leftovers:
            tmp.unlink()
        self._truncate_torn_log_line()

    def _truncate_torn_log_line(self) -> None:
        # A line cut short by a kill would swallow the next appended record; drop the fragment.
        log = self.root / TILE_LOG
        if not log.is_file():
            return
        data = log.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(log, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())
            self._records = None

    # -- identity ----------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def family(self) -> str:
        return self.manifest["model"]["family"]

    @property
    def image_size(self) -> int:
        return int(self.manifest["model"]["image_size"])

    @property
    def checkpoint_sha256(self) -> str:
        return self.manifest["checkpoint"]["sha256"]

    @property
    def crs_wkt(self) -> str:
        return self.manifest["raster"]["crs_wkt"]

    @property
    def geotransform(self) -> Tuple[float, ...]:
        return tuple(self.manifest["raster"]["geotransform"])

    @property
    def feature_names(self) -> List[str]:
        return [item.name for item in self.layout]

    # -- tile log ----------------------------------------------------------------------------------
    def records(self) -> Dict[str, TileRecord]:
        """Finished tiles by id, read from the log once (a torn last line is ignored)."""
        if self._records is None:
            self._records = {}
            log = self.root / TILE_LOG
            if log.is_file():
                for line in log.read_text().splitlines():
                    try:
                        record = TileRecord(**json.loads(line))
                    except (ValueError, TypeError):
                        continue
                    self._records[record.tile_id] = record
        return self._records

    def _append_record(self, record: TileRecord) -> None:
        with open(self.root / TILE_LOG, "a") as handle:
            handle.write(json.dumps(record.__dict__) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records()[record.tile_id] = record

    def status(self, tile: Tile) -> str:
        record = self.records().get(tile.tile_id)
        return record.status if record else STATUS_PENDING

    def pending_tiles(self) -> List[Tile]:
        return [tile for tile in self.grid if self.status(tile) == STATUS_PENDING]

    # -- tile features -----------------------------------------------------------------------------
    def tile_path(self, tile_id: str) -> Path:
        return self.root / TILE_DIR / f"{tile_id}.npy"

    def write_tile(self, tile: Tile, features: Dict[str, np.ndarray], valid_fraction: float) -> None:
        """Store one tile's feature maps (atomic: temp file + rename, then a log line)."""
        flat = np.concatenate([np.asarray(features[item.name], dtype=self.dtype).reshape(-1)
                               for item in self.layout])
        path = self.tile_path(tile.tile_id)
        tmp = temporary_path(path)
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, flat, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise
        self._append_record(TileRecord(tile.tile_id, STATUS_DONE, zlib.crc32(flat.view(np.uint8)),
                                       round(float(valid_fraction), 6)))

    def mark_nodata(self, tile: Tile) -> None:
        """Record a tile with no valid pixel: it is skipped, no features are stored."""
        self._append_record(TileRecord(tile.tile_id, STATUS_NODATA, None, 0.0))

    def load_tile(self, tile_id: str) -> Dict[str, np.ndarray]:
        """Memory-mapped (C, H, W) feature maps of a finished tile; checked against its CRC the first
        time. StoreError naming the tile if it is missing, truncated or corrupt."""
        record = self.records().get(tile_id)
        if record is None or record.status != STATUS_DONE:
            state = "has no features (all nodata)" if record else "was not encoded"
            raise StoreError(f"tile {tile_id} of store '{self.root}' {state}; re-run the same "
                             "'quicksam encode' command to finish the store")
        path = self.tile_path(tile_id)
        expected = sum(item.size for item in self.layout)
        try:
            flat = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, SyntaxError, TokenError) as exc:  # numpy tokenizes a damaged header
            raise StoreError(f"tile {tile_id} of store '{self.root}' is missing or unreadable ({exc}); "
                             "delete that tile's line from tiles.jsonl or re-encode into a new folder") from exc
        if flat.dtype != self.dtype or flat.shape != (expected,):
            raise StoreError(f"tile {tile_id} of store '{self.root}' has the wrong size or type; the store is "
                             "corrupt: re-encode into a new folder")
        if tile_id not in self._verified:
            if zlib.crc32(np.ascontiguousarray(flat).view(np.uint8)) != record.crc32:
                raise StoreError(f"tile {tile_id} of store '{self.root}' is corrupt (checksum mismatch); "
                                 "re-encode into a new folder")
            self._verified.add(tile_id)
        return {item.name: flat[item.offset:item.offset + item.size].reshape(item.shape)
                for item in self.layout}

    # -- summary -----------------------------------------------------------------------------------
    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def summary(self) -> dict:
        counts: Dict[str, int] = {}
        for tile in self.grid:
            status = self.status(tile)
            counts[status] = counts.get(status, 0) + 1
        raster = self.manifest["raster"]
        return {
            "store": str(self.root),
            "model": self.model_name,
            "random_weights": self.manifest["model"]["random_weights"],
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint": self.manifest["checkpoint"].get("name"),
            "crs": raster.get("crs_name"),
            "raster": raster["path"],
            "raster_size": [raster["width"], raster["height"]],
            "bands": self.manifest["preprocessing"]["bands"],
            "tile_size": self.grid.tile_size,
            "overlap": self.grid.overlap,
            "tiles": len(self.grid),
            "tiles_done": counts.get(STATUS_DONE, 0),
            "tiles_nodata": counts.get(STATUS_NODATA, 0),
            "tiles_pending": counts.get(STATUS_PENDING, 0),
            "complete": counts.get(STATUS_PENDING, 0) == 0,
            "feature_dtype": str(self.dtype),
            "bytes_on_disk": self.bytes_on_disk(),
        }
