"""The `quicksam` command: encode rasters, segment objects from prompts, inspect stores, manage checkpoints.

Bad input exits with status 1 and one line on stderr ("quicksam: error: ..."), never a traceback;
an interrupted or cancelled run exits with 130 and keeps every finished tile; a closed stdout (a pipe
whose reader has gone) ends a command quietly with 141. With --progress-json, every command writes its
events to stdout as JSON lines, one format for all (docs/cli-events.md; the Processing algorithm reads
encode's).

`segment` starts a headless QGIS and runs the Processing algorithm `quicksam:segmentprompts`, so the
command, the algorithm and the dock share one implementation (`segment-all` likewise runs
`quicksam:segmentall`). QGIS is imported only there: `encode`, `info` and `checkpoints` work without QGIS,
and an encode never loads the decoding stage.

A store may be the URL of one on an object store (s3://, gs://, az://): `encode` writes the tiles there and keeps
the control files in a local working copy, `info URL` summarises it, and `pull URL DIR` downloads it into a folder
for everything else (object_store.py; docs/scaling.md).

One module per command (encode.py, encode_tile.py, segment.py, segment_all.py, track_masks.py, info.py: info and
checkpoints, object_store.py: pull), the events and exit statuses (events.py), shared argument types (options.py)
and the headless QGIS (headless.py).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from ..core.diskspace import is_disk_full, mount_point
from ..core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ..core.logger import LOGGER
from .encode import add_encode_parser
from .encode_tile import add_encode_tile_parser
from .events import (
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_ENVIRONMENT,
    EXIT_INTERNAL,
    EXIT_OUTPUT_CLOSED,
    EventLogHandler,
    EventWriter,
    OutputClosed,
)
from .info import add_info_parsers
from .object_store import add_pull_parser
from .options import OneLineParser
from .segment import add_segment_parser
from .segment_all import add_segment_all_parser
from .track import add_track_parser
from .track_masks import add_track_masks_parser


def build_parser() -> argparse.ArgumentParser:
    """The `quicksam` parser; each command's `handler(args, events)` is in its `handler` default."""
    parser = OneLineParser(prog="quicksam", description="Segment Anything for geospatial rasters.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_encode_parser(commands)
    add_encode_tile_parser(commands)
    add_segment_parser(commands)
    add_segment_all_parser(commands)
    add_track_parser(commands)
    add_track_masks_parser(commands)
    add_info_parsers(commands)
    add_pull_parser(commands)
    return parser


def _command_of(args: argparse.Namespace) -> str:
    """The command as events name it: "encode", "segment-all", "checkpoints download", ..."""
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if args.command == "checkpoints" and action else args.command


def _is_closed_pipe(exc: BaseException) -> bool:
    return isinstance(exc, (BrokenPipeError, OutputClosed)) or (
        isinstance(exc, OSError) and exc.errno == errno.EPIPE)


def _run_command(args: argparse.Namespace, events: EventWriter) -> int:
    """Run the command's handler; any failure as one stderr line (and an `error` event) and its exit status."""
    try:
        return args.handler(args, events)
    except KeyboardInterrupt:
        events.error("interrupted; finished tiles are kept, run the same command to resume", EXIT_CANCELLED, kind="")
        return EXIT_CANCELLED
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if events.closed or _is_closed_pipe(exc):
            events.closed = True
            return EXIT_OUTPUT_CLOSED
        if isinstance(exc, Cancelled):
            events.error(str(exc), EXIT_CANCELLED, kind="cancelled")
            return EXIT_CANCELLED
        if isinstance(exc, (ImportError, EncoderEnvironmentError)):
            events.error(missing_package_message(exc), EXIT_ENVIRONMENT)
            return EXIT_ENVIRONMENT
        if isinstance(exc, (QuickSamError, ValueError)):
            events.error(str(exc), EXIT_BAD_INPUT)
            return EXIT_BAD_INPUT
        if is_disk_full(exc):  # where no stage said more (e.g. a checkpoint download into the cache)
            where = f" on {mount_point(Path(exc.filename))}" if getattr(exc, "filename", None) else ""
            events.error(f"no space left{where} ({exc}); free space and run the same command again to resume",
                         EXIT_BAD_INPUT)
            return EXIT_BAD_INPUT
        if os.environ.get("QUICKSAM_DEBUG"):
            raise
        events.error(f"unexpected {type(exc).__name__}: {exc} (set QUICKSAM_DEBUG=1 for details and report it)",
                     EXIT_INTERNAL)
        return EXIT_INTERNAL


def missing_package_message(exc: BaseException) -> str:
    """The one line for a package this Python lacks or cannot import (torch, sam2, rasterio, ...), saying how to
    get it: into this Python by hand, or an environment built by QGIS's Raster > QuickSAM > Set up…."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return (f"this Python ({sys.executable}) cannot import a package QuickSAM needs ({detail}); install QuickSAM's "
            "packages into it (requirements.txt, and requirements-torch.txt for encoding), or use the environment "
            "that Raster > QuickSAM > Set up… builds in QGIS")


def _silence_stdout() -> None:
    """Point stdout at the null device, so that Python's final flush into a closed pipe cannot fail."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `quicksam ARGV` (default: sys.argv[1:]); its exit status."""
    # GDAL 3.7+ warns once per process that its exception mode was not chosen; QuickSAM's GDAL code sets
    # the mode it needs where it calls GDAL (interactive/gdal_errors.py), so the warning is noise here,
    # and it would break the one-line error promise.
    warnings.filterwarnings("ignore", message=r"Neither (gdal|ogr|osr)\.UseExceptions\(\) nor", category=FutureWarning)
    args = build_parser().parse_args(argv)
    events = EventWriter(as_json=getattr(args, "progress_json", False), command=_command_of(args))
    handler = EventLogHandler(events)
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        status = _run_command(args, events)
    finally:
        LOGGER.removeHandler(handler)
        events.close()
    if events.closed:
        # The reader has gone (`quicksam ... | head -3`): stop quietly, as a command killed by SIGPIPE
        # does; finished tiles are kept and the same command resumes.
        _silence_stdout()
        return EXIT_OUTPUT_CLOSED
    return status
