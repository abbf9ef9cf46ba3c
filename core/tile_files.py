"""The files of a feature store's tiles, and atomic writes (no QGIS, no torch).

`tiles/<id>.npy`: one tile's feature maps, one flat .npy array (float16 or float32) laid out as the
manifest's `features.arrays` say, memory-mapped; or, with the manifest's `features.codec` (format version 4),
a flat uint8 .npy holding their compressed payload (core/tile_codec.py). Never pickled. `tiles/<id>.valid.npy`:
the tile's valid-pixel mask, np.packbits of a (size, size) bool array in row-major order (uint8, ceil(size² / 8)
bytes). Every file is written to a temporary name in the same folder (NAME.PID.tmp) and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from pathlib import Path
from tokenize import TokenError
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import StoreError
from .tile_codec import decode_tile


def temporary_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: NAME.PID.tmp, so that no two processes ever
    share a temporary (a resume removes every *.tmp, which it may only do while it holds the store's lock)."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, flushed to disk, then renamed (OSError as raised)."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)  # a half-written file would only hold space (a full disk) until the next resume
        raise


def save_npy_atomically(path: Path, array: np.ndarray) -> None:
    """`array` as a .npy file at `path` (no pickle), streamed to a temporary file, flushed, then renamed."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


class TileDamage(Exception):
    """What is wrong with a tile's file, in a few words ("is empty (0 bytes)")."""


def npy_header(path: Path) -> Tuple[np.dtype, Tuple[int, ...], int]:
    """dtype, shape and data offset (bytes) of a .npy file, from its header only."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy version {version[0]}.{version[1]}")
        return dtype, tuple(shape), handle.tell()


def first_line(exc: BaseException, limit: int = 120) -> str:
    """An exception's message as one short line."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def npy_size(dtype: np.dtype, length: int) -> int:
    """Byte size of the .npy file of a flat (length,) array of `dtype` (header and data)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": (int(length),)})
    return header.tell() + int(length) * np.dtype(dtype).itemsize


def map_tile_file(path: Path, dtype: np.dtype, length: int, compressed: bool) -> np.memmap:
    """A tile file memory-mapped read-only after a check of its header and byte size (not of its CRC-32): the
    flat (length,) array of `dtype`, or when `compressed` its flat uint8 payload (any length). TileDamage
    saying what is wrong otherwise."""
    if length == 0:
        raise TileDamage("cannot be read: the manifest lists no feature arrays (features.arrays is empty)")
    if compressed:
        return map_tile_array(path, np.dtype(np.uint8), None)
    return map_tile_array(path, dtype, length)


def map_tile_array(path: Path, dtype: np.dtype, length: Optional[int]) -> np.memmap:
    """The flat (length,) array of `dtype` (any length when None) in a tile's .npy file, memory-mapped
    read-only, after a check of its header and byte size. TileDamage saying what is wrong otherwise."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise TileDamage("is missing") from None
    except OSError as exc:
        raise TileDamage(f"cannot be read ({exc.strerror})") from None
    if size == 0:
        raise TileDamage("is empty (0 bytes)")
    try:
        found_dtype, shape, offset = npy_header(path)
    except (OSError, ValueError, SyntaxError, TokenError, TypeError) as exc:  # numpy tokenizes the header
        raise TileDamage(f"is not a readable .npy array ({first_line(exc)})") from None
    if length is None and len(shape) == 1:
        length = shape[0] or -1   # an empty payload is damage, as any array that does not fit
    if found_dtype != dtype or shape != (length,):
        wanted = f"({length},) {dtype}" if length is not None else f"a flat {dtype} array (a compressed tile)"
        raise TileDamage(f"holds an array of shape {shape} and type {found_dtype}; the manifest's feature "
                         f"layout needs {wanted}")
    if size != offset + length * dtype.itemsize:
        raise TileDamage(f"is {size} bytes, {offset + length * dtype.itemsize} expected (truncated or extended)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(length,))


def tile_values(stored: np.ndarray, dtype: str, codec: Optional[str], shapes: Sequence[Tuple[int, int, int]]
                ) -> np.ndarray:
    """A tile file's flat values: its raw array as it is (no codec), or the codec's payload decoded (the maps of
    (C, H, W) `shapes` back to back; float32 for int8). TileDamage when the payload does not decode."""
    if codec is None:
        return stored
    try:
        return decode_tile(stored, dtype, shapes)
    except ValueError as exc:
        raise TileDamage(f"is damaged: its compressed features {exc}") from None


def crc32_of(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (the tile log's checksum)."""
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8))


def pack_valid_mask(valid: np.ndarray, valid_width: int, valid_height: int) -> Optional[np.ndarray]:
    """A tile's (size, size) bool mask (True = data, pixel (col, row) of the tile at [row, col]) packed to
    bits (np.packbits, row-major: flat uint8 of ceil(size² / 8)), with the padding beyond the raster's edge
    (columns >= valid_width, rows >= valid_height) set invalid; None when every pixel inside the raster is
    valid (nothing to keep)."""
    valid = np.array(valid, dtype=bool)
    valid[valid_height:, :] = False  # padding beyond the raster's edge never holds data
    valid[:, valid_width:] = False
    if valid[:valid_height, :valid_width].all():
        return None
    return np.packbits(valid.reshape(-1))


def read_packed_mask(path: Path, size: int, crc32: int, what: str) -> np.ndarray:
    """The packed mask bytes of a `size` px tile at `path`, checked for size, type and CRC-32. StoreError
    starting with `what` ("the valid-pixel mask of tile ... of store ...") and saying what to do."""
    try:
        packed = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError, TokenError) as exc:
        raise StoreError(f"{what} is missing or unreadable ({exc}); delete that tile's line from tiles.jsonl and "
                         "re-run the same 'quicksam encode' command, or re-encode into a new folder") from exc
    if packed.dtype != np.uint8 or packed.shape != ((size * size + 7) // 8,):
        raise StoreError(f"{what} has the wrong size or type; the store is corrupt: re-encode into a new folder")
    if zlib.crc32(packed.tobytes()) != crc32:
        raise StoreError(f"{what} is corrupt (checksum mismatch); re-encode into a new folder")
    return packed
