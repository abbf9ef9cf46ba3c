"""The date-time of each frame of a series, and the frames put in date order (rasterio; no QGIS).

Where a frame's date-time comes from, first found wins for the whole series (docs/time-series.md):
1. "option": the dates given one per frame (`--dates`), ISO 8601 dates or date-times, in the order the frames
   were given;
2. "filename": a strptime format (`--date-pattern`, e.g. %Y%m%d) searched in the frame's file name (a frame
   taken from a band: in the band's description);
3. "metadata": GDAL metadata read through rasterio tags: TIFFTAG_DATETIME ("YYYY:MM:DD HH:MM:SS") or
   ACQUISITIONDATETIME in the IMAGERY domain; a frame taken from a band: that band's own metadata only
   (DATETIME, ACQUISITIONDATETIME, TIFFTAG_DATETIME, DATE, ACQUISITION_DATE);
4. "index": no date: the frame is known by its place.

No pattern is tried unless one is given (a number in a file name is not taken for a date behind the user's
back). Date-times are written as ISO 8601 without a time zone (`2024-05-01T00:00:00`); one given with a zone is
converted to UTC first, so that frames from different zones sort right.

Errors: QuickSamError, one line saying what to do.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..core.errors import QuickSamError

#: Per-band metadata keys read as a band frame's date-time (case-insensitive).
BAND_DATE_KEYS = ("DATETIME", "ACQUISITIONDATETIME", "TIFFTAG_DATETIME", "DATE", "ACQUISITION_DATE")
#: strptime directives and the text each matches, to find a pattern inside a longer name.
_DIRECTIVES: Dict[str, str] = {
    "Y": r"\d{4}", "y": r"\d{2}", "m": r"\d{1,2}", "d": r"\d{1,2}", "H": r"\d{1,2}", "M": r"\d{1,2}",
    "S": r"\d{1,2}", "j": r"\d{1,3}", "b": r"[A-Za-z]{3}", "B": r"[A-Za-z]+", "f": r"\d{1,6}", "%": "%",
}


@dataclass(frozen=True)
class FrameSource:
    """One frame as the user gave it: `source` the raster (path or GDAL name), `band` the 1-based band taken as the
    frame (a band-per-date raster), or None for the raster's own bands."""

    source: str
    band: Optional[int] = None

    @property
    def name(self) -> str:
        """How messages name the frame: the file name, with the band when it is one."""
        name = Path(self.source).name or self.source
        return f"{name} band {self.band}" if self.band else name


@dataclass(frozen=True)
class DatedFrame:
    """A frame with its date-time (ISO 8601, None when none was found) and where the date came from."""

    frame: FrameSource
    datetime: Optional[str]
    date_source: str


def iso(value: _dt.datetime) -> str:
    """ISO 8601 to the second without a time zone (one with a zone converted to UTC first)."""
    if value.tzinfo is not None:
        value = value.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="seconds")


def parse_iso(text: str) -> _dt.datetime:
    """A date ("2024-05-01") or date-time ("2024-05-01T10:30", "2024-05-01 10:30:00Z") given by the user;
    QuickSamError saying the form expected."""
    try:
        return _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise QuickSamError(f"date '{text}' is not an ISO date or date-time: give e.g. 2024-05-01 or "
                            "2024-05-01T10:30:00 in --dates") from None


def pattern_regex(pattern: str) -> re.Pattern:
    """The regular expression that finds text a strptime `pattern` may parse inside a longer name; QuickSamError
    for a directive it cannot search for."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            directive = pattern[i + 1]
            if directive not in _DIRECTIVES:
                raise QuickSamError(f"--date-pattern {pattern!r}: %{directive} cannot be searched for in a name; use "
                                    f"%Y %m %d %H %M %S %j %y %b %B, e.g. --date-pattern %Y%m%d")
            parts.append(_DIRECTIVES[directive])
            i += 2
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    if not any(part in _DIRECTIVES.values() and part != "%" for part in parts):
        raise QuickSamError(f"--date-pattern {pattern!r} has no date directive: give a strptime format such as "
                            "%Y%m%d or %Y-%m-%d")
    return re.compile("(?=(" + "".join(parts) + "))")


def date_in_text(text: str, pattern: str) -> Optional[_dt.datetime]:
    """The first place in `text` where the strptime `pattern` parses as a date, or None."""
    for match in pattern_regex(pattern).finditer(text):
        candidate = match.group(1)
        # the regex may take one digit too many for %m or %d ("2024011" of "20240115"): try shorter too
        for end in range(len(candidate), 0, -1):
            try:
                return _dt.datetime.strptime(candidate[:end], pattern)
            except ValueError:
                continue
    return None


def parse_metadata_date(text: str) -> Optional[_dt.datetime]:
    """A metadata date-time: TIFF's "YYYY:MM:DD HH:MM:SS", or ISO 8601 (as GDAL's IMAGERY domain writes it);
    None when it is neither."""
    text = text.strip().rstrip("\x00")
    for form in ("%Y:%m:%d %H:%M:%S", "%Y:%m:%d"):
        try:
            return _dt.datetime.strptime(text, form)
        except ValueError:
            pass
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def metadata_date_texts(frame: FrameSource) -> List[Tuple[str, str]]:
    """(key, text) of the frame's date-time metadata that is set (see the module's docstring), in the order tried."""
    import rasterio

    with rasterio.open(frame.source) as src:
        if frame.band:
            tags = {key.upper(): value for key, value in src.tags(frame.band).items()}
            candidates = [(key, tags.get(key)) for key in BAND_DATE_KEYS]
        else:
            candidates = [("TIFFTAG_DATETIME", src.tags().get("TIFFTAG_DATETIME")),
                          ("ACQUISITIONDATETIME", src.tags(ns="IMAGERY").get("ACQUISITIONDATETIME"))]
    return [(key, value) for key, value in candidates if value]


def metadata_date(frame: FrameSource) -> Optional[_dt.datetime]:
    """The frame's date-time from GDAL metadata (see the module's docstring), or None."""
    for _, value in metadata_date_texts(frame):
        parsed = parse_metadata_date(value)
        if parsed is not None:
            return parsed
    return None


def undated_reason(frame: FrameSource) -> str:
    """Why a frame has no date from its metadata: none there, or the text found cannot be read (quoted)."""
    texts = metadata_date_texts(frame)
    if not texts:
        return f"{frame.name} has no date in its metadata"
    key, value = texts[0]
    return f"{frame.name} has an unreadable date in its metadata ({key}={value.strip()!r})"


def name_for_pattern(frame: FrameSource) -> str:
    """Where a --date-pattern is searched: the file name, or a band frame's band description."""
    if not frame.band:
        return Path(frame.source).name
    import rasterio

    with rasterio.open(frame.source) as src:
        return src.descriptions[frame.band - 1] or ""


def dates_of(frames: Sequence[FrameSource], dates: Optional[Sequence[str]],
             date_pattern: Optional[str]) -> Tuple[List[Optional[_dt.datetime]], str]:
    """Each frame's date-time (None where none was found) and the source they came from (DATE_SOURCES).
    QuickSamError when --dates does not give one date per frame, or --date-pattern is not found in every name."""
    if dates:
        if len(dates) != len(frames):
            raise QuickSamError(f"--dates gives {len(dates)} date(s) for {len(frames)} frames: give one per frame, "
                                "in the order the frames are given")
        return [parse_iso(text) for text in dates], "option"
    if date_pattern:
        found = [date_in_text(name_for_pattern(frame), date_pattern) for frame in frames]
        missing = [frame.name for frame, value in zip(frames, found) if value is None]
        if missing:
            where = "band description" if frames[0].band else "file name"
            raise QuickSamError(f"--date-pattern {date_pattern!r} is not found in the {where} of {missing[0]}: give "
                                "a pattern every frame's name holds, or the dates with --dates")
        return found, "filename"
    found = [metadata_date(frame) for frame in frames]
    if any(found):
        return found, "metadata"
    return found, "index"


def dated_frames(frames: Sequence[FrameSource], dates: Optional[Sequence[str]] = None,
                 date_pattern: Optional[str] = None) -> List[DatedFrame]:
    """The frames in date order (frames without dates keep the order given), each with its ISO date-time and date
    source. QuickSamError when some frames have a date and others none, two frames share a date-time, or one raster
    (or band) is given twice."""
    check_given_once(frames)
    found, source = dates_of(frames, dates, date_pattern)
    if any(found) and not all(found):
        undated = next(frame for frame, value in zip(frames, found) if value is None)
        raise QuickSamError(f"{undated_reason(undated)} while other frames have one: give every "
                            "frame's date with --dates, or a --date-pattern found in every file name")
    dated = [DatedFrame(frame, iso(value) if value else None, source) for frame, value in zip(frames, found)]
    if source == "index":
        return dated
    check_distinct_dates(dated)
    return sorted(dated, key=lambda item: item.datetime)


def _identity(frame: FrameSource) -> Tuple[str, Optional[int]]:
    """What makes two frames the same raster: the file's resolved path (a GDAL name as given) and the band."""
    path = Path(frame.source)
    return (str(path.resolve()) if path.exists() else frame.source), frame.band


def check_given_once(frames: Sequence[FrameSource]) -> None:
    """QuickSamError naming the first raster (or band) given twice."""
    seen: Dict[Tuple[str, Optional[int]], int] = {}
    for position, frame in enumerate(frames):
        first = seen.setdefault(_identity(frame), position)
        if first != position:
            raise QuickSamError(f"{frame.name} is given twice (frames {first + 1} and {position + 1} in the order "
                                "given): give each raster once")


def check_distinct_dates(dated: Sequence[DatedFrame]) -> None:
    """QuickSamError naming two frames with the same date-time: each frame needs its own (a tracked polygon shows
    from its frame's date to the next frame's)."""
    seen: Dict[str, DatedFrame] = {}
    for item in dated:
        other = seen.setdefault(item.datetime or "", item)
        if other is not item:
            raise QuickSamError(f"frames {other.frame.name} and {item.frame.name} share the date-time {item.datetime}: "
                                "give each frame its own date, with --dates or a finer --date-pattern")
