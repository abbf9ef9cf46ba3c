"""The tile log of a feature store, tiles.jsonl: one JSON line per finished tile (no QGIS, no torch).

Append-only: {"tile_id", "status": "done" | "nodata", "crc32", "valid_fraction", "valid_crc32"}, and
"file_bytes" for a compressed tile (format version 4: core/tile_codec.py); the last
line of a tile wins (a tile encoded again appends one). Read as bytes, so that one damaged line does not
stop the others from being read; a torn last line (no newline: a killed run's) is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Dict, Optional, Union

from .errors import StoreError
from .manifest_checks import shown
from .store_layout import TILE_LOG

STATUS_DONE = "done"
STATUS_NODATA = "nodata"
STATUS_PENDING = "pending"
#: In memory only, never logged: a tile logged done whose file failed `verify_tiles` (encoded again on resume).
STATUS_DAMAGED = "damaged"
#: The statuses a tile log line may hold.
LOGGED_STATUSES = (STATUS_DONE, STATUS_NODATA)


@dataclass(frozen=True)
class TileRecord:
    """One line of the tile log: `crc32` of the tile file's array bytes (None for a nodata tile);
    `valid_fraction` of the tile's pixels that hold data (0 to 1)."""

    tile_id: str
    status: str
    crc32: Optional[int] = None
    valid_fraction: float = 1.0
    #: CRC-32 of the tile's packed valid-pixel mask file; None when the store keeps no mask for the tile
    #: (every pixel inside the raster is valid, or the store was written before masks were kept).
    valid_crc32: Optional[int] = None
    #: Byte size of a compressed tile's file (a raw tile's follows from the manifest); None otherwise.
    file_bytes: Optional[int] = None


def _is_crc32(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value < 2**32


def tile_record_from_json(data: Any) -> TileRecord:
    """A TileRecord from one parsed tile log line; ValueError saying what is wrong. Keys this version does
    not know are ignored."""
    if not isinstance(data, dict):
        raise ValueError(f"is not a tile record (a JSON object), found {shown(data)}")
    tile_id, status = data.get("tile_id"), data.get("status")
    if not isinstance(tile_id, str) or not tile_id:
        raise ValueError(f"has no tile_id, found {shown(tile_id)}")
    if status not in LOGGED_STATUSES:
        raise ValueError(f"tile {tile_id} has status {shown(status)}, which this QuickSAM does not know "
                         f"({' or '.join(repr(s) for s in LOGGED_STATUSES)})")
    crc32 = data.get("crc32")
    if (status == STATUS_DONE or crc32 is not None) and not _is_crc32(crc32):
        raise ValueError(f"tile {tile_id} has crc32 {shown(crc32)}, not a CRC-32 (an integer from 0 to 2^32-1)")
    valid_crc32 = data.get("valid_crc32")
    if valid_crc32 is not None and not _is_crc32(valid_crc32):
        raise ValueError(f"tile {tile_id} has valid_crc32 {shown(valid_crc32)}, not a CRC-32 (an integer from 0 to "
                         "2^32-1) or null")
    file_bytes = data.get("file_bytes")
    if file_bytes is not None and (isinstance(file_bytes, bool) or not isinstance(file_bytes, int) or file_bytes < 0):
        raise ValueError(f"tile {tile_id} has file_bytes {shown(file_bytes)}, not a byte count or null")
    valid_fraction = data.get("valid_fraction", 1.0)
    if (isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float))
            or not 0.0 <= valid_fraction <= 1.0):
        raise ValueError(f"tile {tile_id} has valid_fraction {shown(valid_fraction)}, not a number from 0 to 1")
    known = {f.name for f in dataclasses.fields(TileRecord)}
    return TileRecord(**{name: value for name, value in data.items() if name in known})


def _line_problem(line: bytes, tile_ids: Collection[str]) -> Union[TileRecord, str]:
    """The record of one log line, or what is wrong with it."""
    try:
        record = tile_record_from_json(json.loads(line.decode("utf-8")))
        if record.tile_id not in tile_ids:
            raise ValueError(f"names tile {record.tile_id}, which is not in the store's grid")
    except UnicodeDecodeError:
        return "is not text (binary bytes)"
    except RecursionError:
        return "is nested too deeply to be a tile record"
    except ValueError as exc:
        return str(exc) if not isinstance(exc, json.JSONDecodeError) else "is not a JSON record"
    return record


def read_tile_log(root: Path, tile_ids: Collection[str]) -> Dict[str, TileRecord]:
    """Finished tiles of the store at `root` by id (the last line of a tile wins); {} without a log.
    StoreError naming the line for a line that is not a record of a tile in `tile_ids`, except a torn last
    line, which is ignored; StoreError when the log cannot be read."""
    try:
        data = (root / TILE_LOG).read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StoreError(f"{TILE_LOG} of store '{root}' cannot be read ({exc.strerror}); check the "
                         "folder's permissions") from None
    lines = data.split(b"\n")
    lines.pop()   # what follows the last newline: nothing, or a line torn by a kill
    records: Dict[str, TileRecord] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        found = _line_problem(line, tile_ids)
        if isinstance(found, TileRecord):
            records[found.tile_id] = found
            continue
        raise StoreError(f"{TILE_LOG} of store '{root}', line {number}: {found}; delete that line and "
                         "re-run the same 'quicksam encode' command (it encodes again the tiles the log no "
                         "longer records), or encode the raster again into a new folder")
    return records


def append_record(root: Path, record: TileRecord) -> None:
    """Append one line to the store's tile log, flushed to disk."""
    with open(root / TILE_LOG, "a") as handle:
        line = {name: value for name, value in record.__dict__.items() if name != "file_bytes" or value is not None}
        handle.write(json.dumps(line) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def truncate_torn_line(root: Path) -> bool:
    """Drop a last line without a newline (a killed run's), which would swallow the next appended record.
    Returns whether the log changed."""
    log = root / TILE_LOG
    if not log.is_file():
        return False
    data = log.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(log, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())
    return True
