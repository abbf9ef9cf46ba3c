"""A series store: the same tile grid encoded for several frames (dates) of co-registered rasters (no QGIS, no torch).

Layout (docs/time-series.md, docs/store-format.md): the store folder is frame 0's store (the first frame in date
order; every tool that opens a plain store opens it as that frame), and `series.json` beside its manifest lists
every frame in order, frame 0 first with folder ".", each other frame a complete store in `frames/t<index>/`
(its own manifest, tiles, tile log, levels). Every frame's store has the same pixel grid (geotransform, size,
CRS) and tile grid as frame 0's, the same model, weights and stretch.

`series.json` is a typed, versioned record read and written only here (`SeriesManifest`); a frame's date-time is
ISO 8601 (`2024-05-01T10:30:00`, no time zone: UTC), or None when none was found (the frame is
then known by its index).

Errors: `read_series` and `write_series` raise StoreError, one line saying what to do.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import StoreError
from .tile_files import atomic_write_bytes

SERIES_FILE = "series.json"
SERIES_FORMAT = "quicksam-series"
#: The series format this QuickSAM writes and reads.
SERIES_VERSION = 1
#: Where a frame's date-time came from.
DATE_SOURCES = ("option", "filename", "metadata", "index")


@dataclass(frozen=True)
class FrameRef:
    """One frame of a series. `index`: its place in date order (0 = frame 0, the store folder itself); `folder`:
    its store, relative to the series root ("." or `frames/t0003`); `source`: the raster it was read from (path or
    GDAL name); `band`: the 1-based band taken as the frame (a band-per-date raster), None when the frame uses the
    store's bands; `datetime`: ISO 8601 or None; `date_source`: one of DATE_SOURCES; `resampling`: the GDAL
    resampling used to bring the frame onto frame 0's grid, None when it was on it."""

    index: int
    folder: str
    source: str
    band: Optional[int] = None
    datetime: Optional[str] = None
    date_source: str = "index"
    resampling: Optional[str] = None

    @property
    def label(self) -> str:
        """What a user is shown for the frame: its date-time, else "frame 3"."""
        return self.datetime or f"frame {self.index}"

    @property
    def named(self) -> str:
        """How messages name the frame: "frame 3 (2024-07-01T00:00:00)", or "frame 3" without a date."""
        return f"frame {self.index} ({self.datetime})" if self.datetime else f"frame {self.index}"


@dataclass(frozen=True)
class SeriesManifest:
    """series.json: the frames in date order (`frames[i].index == i`, frame 0's folder "."), and `grid_source`,
    the raster whose pixel grid every frame is on (frame 0's source unless the user gave another)."""

    frames: Tuple[FrameRef, ...]
    grid_source: str
    format_version: int = SERIES_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames", tuple(self.frames))
        for position, frame in enumerate(self.frames):
            if frame.index != position:
                raise ValueError(f"frame {frame.index} is listed at place {position}")

    def to_json(self) -> Dict[str, Any]:
        return {"format": SERIES_FORMAT, "format_version": self.format_version, "grid_source": self.grid_source,
                "frames": [dataclasses.asdict(frame) for frame in self.frames]}

    @classmethod
    def from_json(cls, data: Any) -> SeriesManifest:
        """ValueError naming what is wrong when `data` is not a series manifest this QuickSAM reads."""
        if not isinstance(data, dict) or data.get("format") != SERIES_FORMAT:
            raise ValueError(f"its format is not {SERIES_FORMAT!r}")
        if data.get("format_version") != SERIES_VERSION:
            raise ValueError(f"its format version {data.get('format_version')!r} is not {SERIES_VERSION} (a newer "
                             "QuickSAM wrote it: update QuickSAM)")
        frames = data.get("frames")
        if not isinstance(frames, list) or not frames:
            raise ValueError("it lists no frames")
        try:
            refs = tuple(FrameRef(**item) for item in frames)
        except TypeError as exc:
            raise ValueError(f"a frame is damaged ({exc})") from None
        if refs[0].folder != "." or any(ref.date_source not in DATE_SOURCES for ref in refs):
            raise ValueError("its frames are damaged")
        return cls(frames=refs, grid_source=str(data.get("grid_source", "")))


def frame_folder_name(index: int) -> str:
    """The folder of frame `index` relative to the series root: "." for frame 0, else `frames/t0003`."""
    return "." if index == 0 else f"frames/t{index:04d}"


def frame_path(root: Path, frame: FrameRef) -> Path:
    """The store folder of `frame` in the series whose root folder is `root`."""
    return Path(root) if frame.folder == "." else Path(root) / frame.folder


def read_series(root: Path) -> Optional[SeriesManifest]:
    """The series manifest of the store folder `root`, or None for a store that is not a series. StoreError (one
    line) when `series.json` is there but unreadable or damaged."""
    path = Path(root) / SERIES_FILE
    if not path.is_file():
        return None
    try:
        return SeriesManifest.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{SERIES_FILE} of store '{root}' cannot be read ({exc}); encode the series again into a "
                         "new folder") from None


def write_series(root: Path, series: SeriesManifest) -> None:
    """Write `root`/series.json atomically (temp file + rename); StoreError when the folder cannot be written."""
    text = json.dumps(series.to_json(), indent=1)
    try:
        atomic_write_bytes(Path(root) / SERIES_FILE, text.encode())
    except OSError as exc:
        raise StoreError(f"cannot write {SERIES_FILE} into store '{root}' ({exc}); choose a folder you can write") \
            from None


def series_labels(series: Optional[SeriesManifest]) -> List[str]:
    """The frames' labels in order (empty for a store that is not a series)."""
    return [frame.label for frame in series.frames] if series else []
