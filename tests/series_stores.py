"""Series stores for tests, built until `quicksam encode --series` exists: each frame raster encoded with the
existing CLI (random weights, 256 px tiles) into the series root (frame 0) and `frames/t000k`, then `series.json`
written with core.series.write_series.

The scene is 400 x 256 px (two 256 px tiles overlapping by 64 px, tile r0000c0000 covering columns 0-255 and
r0000c0001 columns 144-399) in EPSG:32633 with 10 m pixels (tests/synthetic.py's default transform): a bright
square that moves 4 px right per frame on a dark background.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional, Sequence

from synthetic import cli_command, encode_args, square_scene, write_raster

SERIES_WIDTH, SERIES_HEIGHT = 400, 256
#: The dates of the default series' frames (ISO 8601, no time zone), frame 0 first.
SERIES_DATES = ("2024-05-01T10:30:00", "2024-05-11T10:30:00", "2024-05-21T10:30:00", "2024-06-10T10:30:00")


def series_scene(frame: int):
    """(3, 256, 400) uint8: the square (40 px) at column 60 + 4 * frame, row 100."""
    return square_scene(SERIES_WIDTH, SERIES_HEIGHT, (60 + 4 * frame, 100, 40))


def build_series(folder: Path, dates: Sequence[Optional[str]] = SERIES_DATES, *encode_extra: str) -> Path:
    """A series store in `folder`/series of len(`dates`) frames (None: a frame without a date); its path. The
    frames are encoded by concurrent `quicksam encode` processes (random weights); AssertionError with the
    encoder's stderr when one fails."""
    from quicksam.core.series import FrameRef, SeriesManifest, frame_folder_name, frame_path, write_series

    root = Path(folder) / "series"
    refs, processes = [], []
    for index, date in enumerate(dates):
        raster = write_raster(Path(folder) / f"frame{index}.tif", series_scene(index))
        ref = FrameRef(index=index, folder=frame_folder_name(index), source=str(raster), datetime=date,
                       date_source="option" if date else "index")
        target = frame_path(root, ref)
        target.parent.mkdir(parents=True, exist_ok=True)
        if index == 0:
            _encoded(subprocess.Popen(cli_command(*encode_args(raster, target, *encode_extra, overlap=64)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        else:
            processes.append(subprocess.Popen(cli_command(*encode_args(raster, target, *encode_extra, overlap=64)),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        refs.append(ref)
    for process in processes:
        _encoded(process)
    write_series(root, SeriesManifest(frames=tuple(refs), grid_source=refs[0].source))
    return root


def _encoded(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
