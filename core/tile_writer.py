"""Writing one tile's files into a feature store, apart from recording it (no QGIS, no torch).

`TileWriter` writes `tiles/<id>.npy` (the feature maps: a raw float array, or with the manifest's codec a
compressed payload, core/tile_codec.py) and, when the tile has nodata inside the raster,
`tiles/<id>.valid.npy` (its packed valid-pixel mask), each atomically (core/tile_files.py), and returns the
`TileRecord` the store's log will hold; it never touches the tile log or the manifest. The process that owns
the store appends the record (`FeatureStore.record`): the plain pipeline right after the write, a Dask run's
coordinator once per tile as the workers' results arrive (encoder/cluster_encode.py). Writing a tile twice is
harmless: the same bytes replace the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .manifest import ArrayLayout
from .store_layout import TILE_DIR, VALID_MASK_SUFFIX
from .tile_codec import decoded_dtype, encode_tile
from .tile_files import crc32_of, npy_size, pack_valid_mask, save_npy_atomically
from .tile_log import STATUS_DONE, STATUS_NODATA, TileRecord
from .tiling import Tile


def tile_file(root: Path, tile_id: str) -> Path:
    """`tiles/<id>.npy` of the store at `root`."""
    return Path(root) / TILE_DIR / f"{tile_id}.npy"


def valid_mask_file(root: Path, tile_id: str) -> Path:
    """`tiles/<id>.valid.npy` of the store at `root`."""
    return Path(root) / TILE_DIR / f"{tile_id}{VALID_MASK_SUFFIX}"


def nodata_record(tile: Tile) -> TileRecord:
    """The record of a tile with no valid pixel (nothing is written for it)."""
    return TileRecord(tile.tile_id, STATUS_NODATA, None, 0.0)


class TileFiles:
    """What every tile writer does: pack the valid mask, flatten the features in `layout` order as `dtype` and
    give the record to log. A subclass says where a file goes (`_save`) and has `layout`, `dtype` and `codec`
    (the manifest's `features.codec`: None writes the raw array, else its compressed payload)."""

    layout: Sequence[ArrayLayout]
    dtype: str
    codec: Optional[str] = None

    def _save(self, name: str, array: np.ndarray) -> None:
        """Store `array` as `tiles/<name>` of the store, whole or not at all."""
        raise NotImplementedError

    def write_valid_mask(self, tile: Tile, valid: np.ndarray) -> Optional[int]:
        """Keep a tile's valid-pixel mask ((size, size) bool, True = data; pixel (col, row) of the tile is
        valid[row, col]) as np.packbits of the mask in row-major order, a flat uint8 .npy of ceil(size² / 8)
        bytes, written atomically. Returns its CRC-32, or None when every pixel inside the raster is valid
        (nothing written: padding is invalid by the grid alone). ValueError if the mask is not (size, size)."""
        if np.shape(valid) != (tile.size, tile.size):
            raise ValueError(f"a valid mask of tile {tile.tile_id} must be {tile.size} x {tile.size}, "
                             f"not {np.shape(valid)}")
        packed = pack_valid_mask(valid, tile.valid_width, tile.valid_height)
        if packed is None:
            return None
        self._save(f"{tile.tile_id}{VALID_MASK_SUFFIX}", packed)
        return crc32_of(packed)

    def write_features(self, tile: Tile, features: Dict[str, np.ndarray], valid_fraction: float,
                       valid_crc32: Optional[int] = None) -> TileRecord:
        """Write one tile's feature maps ({name: (C, H, W)}) as one flat array in `layout` order (with a codec:
        its compressed payload, a flat uint8 array), atomically; the record to log (CRC-32 of the saved array's
        bytes, and the file's size for a payload)."""
        flat = np.concatenate([np.asarray(features[item.name], dtype=decoded_dtype(self.dtype)).reshape(-1)
                               for item in self.layout])
        file_bytes = None
        if self.codec is not None:
            flat = encode_tile(flat, self.dtype, [item.shape for item in self.layout])
            file_bytes = npy_size(flat.dtype, flat.size)
        self._save(f"{tile.tile_id}.npy", flat)
        return TileRecord(tile.tile_id, STATUS_DONE, crc32_of(flat), round(float(valid_fraction), 6), valid_crc32,
                          file_bytes)

    def write(self, tile: Tile, features: Dict[str, np.ndarray], valid: np.ndarray) -> TileRecord:
        """The valid-pixel mask (when needed), then the features; the record to log."""
        valid_crc32 = self.write_valid_mask(tile, valid)
        return self.write_features(tile, features, float(np.mean(valid)), valid_crc32)


@dataclass(frozen=True)
class TileWriter(TileFiles):
    """Writes tile files into the store folder `root` whose tile files hold `layout` (the manifest's feature
    arrays, in file order) as `dtype` (float16, float32, int8) with `codec`, each file atomically (a temporary
    file renamed). Small and picklable: a Dask task carries it."""

    root: Path
    layout: Sequence[ArrayLayout]
    dtype: str
    codec: Optional[str] = None

    def _save(self, name: str, array: np.ndarray) -> None:
        save_npy_atomically(Path(self.root) / TILE_DIR / name, array)
