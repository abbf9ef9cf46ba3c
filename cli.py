"""The `quicksam` command: encode rasters, segment objects from prompts, inspect stores, manage checkpoints.

Bad input exits with status 1 and one line on stderr ("quicksam: error: ..."), never a traceback;
an interrupted or cancelled run exits with 130 and keeps every finished tile; a closed stdout (a pipe
whose reader has gone) ends a command quietly with 141. With --progress-json, every command writes its
events to stdout as JSON lines, one format for all (docs/cli-events.md; the Processing algorithm reads
encode's).

`segment` starts a headless QGIS and runs the Processing algorithm `quicksam:segmentprompts`, so the
command, the algorithm and the dock share one implementation. QGIS is imported only there: `encode`,
`info` and `checkpoints` work without QGIS.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import logging
import math
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple, TypeVar

from .core.catalogue import CHECKPOINTS, DEFAULT_MODEL, MODELS, default_checkpoint_for
from .core.defaults import MASK_MODES
from .core.diskspace import is_disk_full, mount_point
from .core.errors import Cancelled, QuickSamError
from .core.tiling import DEFAULT_OVERLAP

LOG = logging.getLogger("quicksam")
EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 2
EXIT_CANCELLED = 130
#: The layer the Processing run writes into its private GeoPackage (the output's own layer is --layer).
#: The reader of stdout has gone (a closed pipe): 128 + SIGPIPE, what a shell shows for `yes | head -1`.
EXIT_OUTPUT_CLOSED = 141
SEGMENT_LAYER = "segments"
#: --output help: the format comes from the extension (interactive/output_formats.py).
OUTPUT_HELP = ("vector file for the polygons (raster CRS), its format by its extension: .gpkg (GeoPackage: the "
               "layer --layer is added, its other layers are kept), .shp, .geojson/.json (GeoJSON in the raster's "
               "CRS, stated by its EPSG code, not reprojected to EPSG:4326), .fgb, .parquet (where GDAL has "
               "GeoParquet) or another vector format GDAL writes")
LAYER_HELP = "layer name in a GeoPackage (default %(default)s); the file's other layers are kept"
T = TypeVar("T")


class OutputClosed(Exception):
    """Whoever read the command's output has closed it (`quicksam ... | head -3`): the command stops."""


class EventWriter:
    """What a command says while it runs: JSON lines for programs (--progress-json), or lines for people.

    JSON lines (docs/cli-events.md): every stdout line is one event `{"event": NAME, "command": COMMAND,
    ...}`: `start`, `progress` (done, total, unit, percent), `info` and `warning` (message), `finished`
    (summary: what the command prints without --progress-json) and `error` (message, exit_status; the
    one-line error is on stderr as well). For people: progress as a counter and messages on stderr, the
    summary as JSON on stdout.

    Events are written to a private duplicate of the process's stdout (stderr for people's lines) taken
    when the writer is made: QGIS's output capture (`_captured_process_output`) redirects the file
    descriptors themselves and would swallow them. When the reader has gone (a closed pipe) `closed` turns
    true, nothing more is written, and the command ends quietly (see `main`).
    """

    def __init__(self, as_json: bool, command: str = "", stream: Optional[TextIO] = None):
        self.as_json = as_json
        self.command = command
        self.closed = False
        self._owned: List[TextIO] = []
        self.stream = stream or self._duplicate(sys.stdout if as_json else sys.stderr)
        self.result_stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._line_open = False  # a "\r3/9 tiles" counter not yet ended by a newline

    def _duplicate(self, original: Optional[TextIO]) -> Optional[TextIO]:
        """A text stream on a duplicate of `original`'s file descriptor, or `original` itself when it has
        none (pytest's capture, a GUI console)."""
        try:
            fd = os.dup(original.fileno())
        except (AttributeError, OSError, ValueError):
            return original
        duplicate = os.fdopen(fd, "w", encoding=getattr(original, "encoding", None) or "utf-8",
                              errors="backslashreplace", buffering=1)
        self._owned.append(duplicate)
        return duplicate

    def close(self) -> None:
        """Close the duplicated streams (main does, when the command has ended)."""
        for stream in self._owned:
            with contextlib.suppress(OSError):
                stream.close()
        self._owned = []

    # -- the events ------------------------------------------------------------------------------------
    def start(self, **fields) -> None:
        self.emit("start", **fields)

    def progress(self, done: float, total: Optional[float], unit: str, **fields) -> None:
        percent = round(100.0 * done / total, 2) if total else None
        self.emit("progress", done=done, total=total, unit=unit, percent=percent, **fields)

    def info(self, message: str) -> None:
        self.emit("info", message=message)

    def warning(self, message: str) -> None:
        self.emit("warning", message=message)

    def finished(self, summary: object, indent: Optional[int] = None, **fields) -> None:
        """The command's result: a `finished` event, or for people `summary` as JSON on stdout."""
        if self.as_json:
            self.emit("finished", summary=summary, **fields)
        else:
            self._write(self.result_stream, json.dumps(summary, indent=indent) + "\n")

    def error(self, message: str, exit_status: int, kind: str = "error") -> None:
        """The one stderr line "quicksam: KIND: MESSAGE", and with --progress-json an `error` event too."""
        if self.as_json:
            self.emit("error", message=message, exit_status=exit_status)
        line = f"quicksam: {kind}: {message}\n" if kind else f"quicksam: {message}\n"
        if not self.as_json:
            self._end_counter()
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(line)
            sys.stderr.flush()

    def emit(self, event: str, **fields) -> None:
        """One event: a JSON line, or for people the counter or message it stands for."""
        with self._lock:
            if self.as_json:
                self._write(self.stream, json.dumps({"event": event, "command": self.command, **fields}) + "\n")
            elif event == "progress":
                self._write_counter(fields)
            elif event in ("info", "warning"):
                self._end_counter()
                prefix = "quicksam: warning: " if event == "warning" else ""
                self._write(self.stream, prefix + fields["message"] + "\n")

    # -- for people ------------------------------------------------------------------------------------
    def _write_counter(self, fields: dict) -> None:
        done, total, unit = fields["done"], fields["total"], fields["unit"]
        if unit == "bytes":
            text = f"downloading: {done / 1e6:.0f}" + (f"/{total / 1e6:.0f} MB" if total else " MB")
        else:
            text = f"{done}/{total} {unit}"
        if fields.get("percent") is not None:
            text += f" ({fields['percent']:.0f}%)"
        finished = total is not None and done >= total
        self._write(self.stream, "\r" + text + ("\n" if finished else ""))
        self._line_open = not finished

    def _end_counter(self) -> None:
        if self._line_open:
            self._line_open = False
            self._write(self.stream, "\n")

    def _write(self, stream: Optional[TextIO], text: str) -> None:
        if self.closed or stream is None:
            return
        try:
            stream.write(text)
            stream.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self._reader_gone(stream)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EINVAL):  # EINVAL: a closed pipe on Windows
                raise
            self._reader_gone(stream)

    def _reader_gone(self, stream: TextIO) -> None:
        """Nothing more is written; the stream's descriptor now leads nowhere, so that the data still in
        its buffer cannot fail again when Python flushes it at exit."""
        self.closed = True
        with contextlib.suppress(AttributeError, OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)

    def check_open(self) -> None:
        """OutputClosed once the reader has gone: long work stops instead of running for no one."""
        if self.closed:
            raise OutputClosed("the output was closed")


class _EventLogHandler(logging.Handler):
    """The `quicksam` logger's records as `info` and `warning` events."""

    def __init__(self, events: EventWriter):
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.events.warning(record.getMessage())
        else:
            self.events.info(record.getMessage())


def _add_events_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress-json", action="store_true",
                        help="write events as JSON lines on stdout: start, progress, info, warning, finished (the "
                             "result), error (docs/cli-events.md)")


def _parse_ints(text: str) -> List[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 3,2,1, got '{text}'") from None


def _parse_extent(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected xmin,ymin,xmax,ymax in the raster's CRS, got '{text}'")
    return values


def _add_encode_parser(commands) -> None:
    encode = commands.add_parser("encode", help="encode a raster into a feature store",
                                 description="Encode a raster once into a feature store for interactive "
                                             "segmentation. Re-running the same command resumes.")
    encode.add_argument("raster", help="raster file (any GDAL format)")
    encode.add_argument("store", type=Path, help="output folder of the feature store (new, empty, or a store "
                                                  "made by the same command, which is then resumed)")
    encode.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="model (default %(default)s)")
    weights = encode.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="checkpoint file or checkpoint name (default: the model's "
                                              "official checkpoint, downloaded into the user cache if missing)")
    weights.add_argument("--random-weights", action="store_true",
                         help="seeded random weights: for tests and offline demos; the store says so")
    encode.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default 0)")
    encode.add_argument("--bands", type=_parse_ints, help="1 to 3 band numbers fed as R,G,B, e.g. 3,2,1")
    encode.add_argument("--overlap", type=int, default=None,
                        help=f"overlap of neighbouring tiles in pixels (default {DEFAULT_OVERLAP}, a quarter of the "
                             "tile size)")
    encode.add_argument("--extent", type=_parse_extent, help="xmin,ymin,xmax,ymax in the raster's CRS")
    encode.add_argument("--batch-size", type=int, default=1, help="tiles per model call (default 1)")
    encode.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    encode.add_argument("--tile-size", type=int, default=1024,
                        help="model input size in pixels (default 1024, the models' native size; smaller "
                             "sizes are for tests and quick demos)")
    encode.add_argument("--stretch", default="percentile", choices=["percentile", "none"],
                        help="percentile: 2-98 %% of the whole raster per band (default); none: values as 0-255")
    encode.add_argument("--feature-dtype", default="float16", choices=["float16", "float32"],
                        help="stored feature precision (default float16: half the disk, ~1e-4 logit change)")
    _add_events_option(encode)
    encode.set_defaults(handler=_cmd_encode)


def _parse_point(text: str) -> Tuple[float, float, int]:
    parts = text.split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if (len(values) not in (2, 3) or not all(math.isfinite(v) for v in values)
            or (len(values) == 3 and values[2] not in (0, 1))):
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,LABEL (LABEL 1 = foreground, 0 = background), "
                                         f"got '{text}'")
    return values[0], values[1], int(values[2]) if len(values) == 3 else 1


def _parse_box(text: str) -> Tuple[float, float, float, float]:
    xmin, ymin, xmax, ymax = _parse_extent(text)
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)) or xmin >= xmax or ymin >= ymax:
        raise argparse.ArgumentTypeError(f"expected XMIN,YMIN,XMAX,YMAX with XMIN < XMAX and YMIN < YMAX, got '{text}'")
    return xmin, ymin, xmax, ymax


def _add_segment_parser(commands) -> None:
    segment = commands.add_parser(
        "segment", help="segment objects on an encoded raster from points, a box or a file of prompts",
        description="Segment objects on a feature store from prompts and write their polygons (in the raster's "
                    "CRS). --point and --box prompts describe ONE object (like clicks in the dock); a --prompts "
                    "file holds any number: each point or polygon is one object, or features sharing "
                    "--group-field form one. Objects that cannot be segmented are reported and skipped; the "
                    "command fails, writing nothing, only if none could be. Runs the Processing algorithm "
                    "quicksam:segmentprompts in a headless QGIS.")
    segment.add_argument("store", type=Path, help="feature store folder written by 'quicksam encode'")
    segment.add_argument("--point", type=_parse_point, action="append", metavar="X,Y[,LABEL]",
                         help="a point prompt; LABEL 1 = foreground (default), 0 = background. Repeat for more "
                              "points of the same object. Negative X: write --point=X,Y")
    segment.add_argument("--box", type=_parse_box, action="append", metavar="XMIN,YMIN,XMAX,YMAX",
                         help="a box prompt around the object (at most one); clipped to the raster where it "
                              "reaches past its edge")
    segment.add_argument("--prompts", type=Path, metavar="FILE",
                         help="a vector file (GeoJSON, GeoPackage, ...) of prompt points and/or polygons")
    segment.add_argument("--prompts-crs", metavar="CRS",
                         help="CRS of the prompt coordinates, e.g. EPSG:4326 (default: the raster's CRS for "
                              "--point/--box, the file's own CRS for --prompts, which this overrides)")
    segment.add_argument("--group-field", help="with --prompts: features with the same value form one object")
    segment.add_argument("--label-field", help="with --prompts: 1 = foreground, 0 = background (default: all "
                                               "foreground)")
    segment.add_argument("--mask-mode", default="single", choices=MASK_MODES,
                         help="single (default), best, largest or smallest mask, or all (up to 3 per object)")
    segment.add_argument("--simplify", type=float, default=0.0,
                         help="simplification tolerance in the raster CRS's map units (default 0: pixel edges)")
    segment.add_argument("--min-area", type=float, default=0.0,
                         help="drop parts and holes smaller than this many pixels (default 0)")
    segment.add_argument("--fill-holes", action="store_true", help="fill the holes of the polygons")
    segment.add_argument("--output", type=Path, required=True, metavar="OUT.gpkg", help=OUTPUT_HELP)
    segment.add_argument("--layer", default=SEGMENT_LAYER, help=LAYER_HELP)
    segment.add_argument("--overwrite", action="store_true",
                         help="replace --output if it exists (in a GeoPackage: only its layer --layer)")
    _add_events_option(segment)
    segment.set_defaults(handler=_cmd_segment)


def _add_segment_all_parser(commands) -> None:
    from .interactive.automatic import AutoMaskSettings

    defaults = AutoMaskSettings()
    command = commands.add_parser(
        "segment-all", help="segment everything on an encoded raster (automatic masks, merged across tiles)",
        description="Find every object on a feature store with SAM's automatic mask generator, tile by tile from "
                    "the cached features, objects across tile borders merged into one polygon "
                    "(docs/segment-everything.md). A stopped run resumes when the same command is run again. "
                    "Runs the Processing algorithm quicksam:segmentall in a headless QGIS.")
    command.add_argument("store", type=Path, help="feature store folder written by 'quicksam encode'")
    command.add_argument("--output", type=Path, required=True, metavar="OUT.gpkg",
                         help=OUTPUT_HELP + "; a stopped run is kept in OUT.partial.gpkg beside it")
    command.add_argument("--layer", default=SEGMENT_LAYER, help=LAYER_HELP)
    command.add_argument("--aoi", type=Path, metavar="FILE", help="polygon file: only tiles meeting it (any CRS)")
    command.add_argument("--extent", type=_parse_box, metavar="XMIN,YMIN,XMAX,YMAX",
                         help="only tiles meeting this extent (the raster's CRS)")
    for name, kind, text in (
            ("points-per-side", int, "grid of N x N point prompts per tile"),
            ("points-per-batch", int, "prompts per decoder call (0 = automatic: 4 on the CPU, 64 on a GPU)"),
            ("pred-iou-thresh", float, "minimum predicted IoU"),
            ("stability-score-thresh", float, "minimum stability score"),
            ("stability-score-offset", float, "logit offset of the stability score"),
            ("box-nms-thresh", float, "box IoU above which the lower-scored mask of a tile is dropped"),
            ("min-mask-region-area", int, "remove islands and holes smaller than this many pixels"),
            ("min-object-area", float, "drop objects smaller than this (map units², 0 = no limit)"),
            ("max-object-area", float, "drop objects larger than this (map units², 0 = no limit)"),
            ("simplify", float, "simplification tolerance in map units (0 = pixel edges)")):
        key = name.replace("-", "_")
        default = getattr(defaults, "simplify_tolerance" if key == "simplify" else key)
        command.add_argument(f"--{name}", type=kind, default=default, help=f"{text} (default {default})")
    command.add_argument("--mask-mode", default=defaults.mask_mode, choices=MASK_MODES,
                         help="all (default: SAM's three candidates per point), single, best, largest, smallest")
    command.add_argument("--overwrite", action="store_true",
                         help="replace --output (in a GeoPackage: only its layer --layer) if it exists and restart "
                              "an unfinished run with other settings")
    _add_events_option(command)
    command.set_defaults(handler=_cmd_segment_all)


def _add_other_parsers(commands) -> None:
    info = commands.add_parser("info", help="print a JSON summary of a feature store")
    info.add_argument("store", type=Path)
    _add_events_option(info)
    info.set_defaults(handler=_cmd_info)

    checkpoints = commands.add_parser("checkpoints", help="list, download or register checkpoints")
    actions = checkpoints.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="official and registered checkpoints, and which are cached")
    _add_events_option(listing)
    download = actions.add_parser("download", help="download a checkpoint into the user cache")
    download.add_argument("name")
    _add_events_option(download)
    register = actions.add_parser("register", help="register a custom checkpoint (e.g. a micro-sam fine-tune)")
    register.add_argument("name")
    register.add_argument("--model", required=True, choices=sorted(MODELS))
    source = register.add_mutually_exclusive_group(required=True)
    source.add_argument("--path")
    source.add_argument("--url")
    register.add_argument("--sha256", help="expected SHA-256 of a --url checkpoint")
    _add_events_option(register)
    checkpoints.set_defaults(handler=_cmd_checkpoints)


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line, like every other error."""

    def error(self, message: str) -> None:
        self.exit(EXIT_BAD_INPUT, f"quicksam: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="quicksam", description="Segment Anything for geospatial rasters.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_encode_parser(commands)
    _add_segment_parser(commands)
    _add_segment_all_parser(commands)
    _add_other_parsers(commands)
    return parser


def _download_progress(events: EventWriter, name: str) -> Callable[[int, Optional[int]], None]:
    """`progress` events in bytes (unit "bytes", stage "download") at most once per percent (per MB when the
    size is unknown)."""
    state = {"last": -1}

    def report(done: int, total: Optional[int]) -> None:
        step = int(100 * done / total) if total else done // 1_000_000
        if step != state["last"]:
            state["last"] = step
            events.progress(done, total, "bytes", stage="download", checkpoint=name)
            events.check_open()
    return report


def _resolve_weights(args, events: EventWriter):
    from .encoder.checkpoints import resolve_checkpoint

    if args.random_weights:
        return None
    name = args.checkpoint or default_checkpoint_for(args.model).name
    return resolve_checkpoint(name, model=args.model, progress=_download_progress(events, name))


def default_overlap(args) -> int:
    """--overlap, else a quarter of the tile: 256 px for the models' native 1024 px tiles."""
    return args.tile_size // 4 if args.overlap is None else args.overlap


def _cmd_encode(args, events: EventWriter) -> int:
    from .encoder.pipeline import EncodeRequest, encode_raster

    checkpoint = _resolve_weights(args, events)
    request = EncodeRequest(
        raster=args.raster, store=args.store, model=args.model, checkpoint=checkpoint, seed=args.seed,
        bands=args.bands, overlap=default_overlap(args), extent=args.extent, batch_size=args.batch_size,
        device=args.device, tile_size=args.tile_size, stretch=args.stretch, feature_dtype=args.feature_dtype)

    def on_progress(event) -> None:
        events.progress(event.done, event.total, "tiles", tile=event.tile_id, status=event.status)
        events.check_open()  # in the writer thread: the encoding stops, its tiles kept

    def on_start(store, todo: int) -> None:
        # Warned only once the inputs are checked, so bad input still gets its single error line.
        events.start(store=str(store.root), raster=args.raster, tiles=len(store.grid), todo=todo)
        if args.random_weights:
            events.warning("using seeded random weights: the masks will be meaningless; the store records this")

    store, stats = encode_raster(request, progress=on_progress, started=on_start)
    events.finished(store.summary(), indent=2, store=str(store.root),
                    tile_index=str(store.root / "tile_index.gpkg"), seconds=round(stats.total_seconds, 3))
    return 0


def _cmd_info(args, events: EventWriter) -> int:
    from .core.store import FeatureStore

    events.start(store=str(args.store))
    events.finished(FeatureStore.open(args.store).summary(), indent=2)
    return 0


def _cmd_checkpoints(args, events: EventWriter) -> int:
    from .encoder import checkpoints

    events.start(**({"name": args.name} if args.action != "list" else {}))
    if args.action == "list":
        rows = []
        for name, spec in checkpoints.all_checkpoints().items():
            cached = checkpoints.cached_checkpoint(spec.model) if name in CHECKPOINTS else None
            rows.append({"name": name, "model": spec.model, "url": spec.url, "sha256": spec.sha256,
                         "official": name in CHECKPOINTS, "cached": str(cached.path) if cached else None})
        events.finished(rows, indent=2)
    elif args.action == "download":
        resolved = checkpoints.resolve_checkpoint(args.name, progress=_download_progress(events, args.name))
        events.finished({"name": resolved.name, "path": str(resolved.path), "sha256": resolved.sha256})
    else:
        spec = checkpoints.register_checkpoint(args.name, args.model, path=args.path, url=args.url,
                                               sha256=args.sha256)
        events.finished({"registered": spec.name, "model": spec.model, "url": spec.url})
    return 0


def _check_segment_output(output: Path, overwrite: bool, layer: str = SEGMENT_LAYER):
    """The --output destination (absolute path, format, layer), refused (QuickSamError) before any work if
    it cannot be written; see `output_formats.check_destination`."""
    from .interactive.output_formats import check_destination

    return check_destination(output, layer, overwrite)


def _check_segment_prompts(args) -> None:
    if args.prompts and (args.point or args.box):
        raise QuickSamError("give the prompts either with --point/--box or in a --prompts file, not both")
    if not (args.prompts or args.point or args.box):
        raise QuickSamError("give the object's prompts: one or more --point X,Y[,LABEL], a --box, or a --prompts "
                            "file")
    if args.box and len(args.box) > 1:
        raise QuickSamError("--box was given more than once, but --point/--box prompts form one object with one "
                            "box; put several objects in a --prompts file")
    if (args.group_field or args.label_field) and not args.prompts:
        raise QuickSamError("--group-field and --label-field apply to a --prompts file only")
    if args.prompts and not args.prompts.is_file():
        raise QuickSamError(f"the prompts file '{args.prompts}' does not exist")


@contextlib.contextmanager
def _captured_process_output() -> Iterator[None]:
    """Send whatever GDAL, PROJ, Qt and QGIS print (file descriptors 1 and 2) to the debug log, so that bad
    input still ends in exactly one error line. QUICKSAM_DEBUG=1 leaves the output alone."""
    if os.environ.get("QUICKSAM_DEBUG"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in saved.items():
                os.dup2(original, fd)
                os.close(original)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                LOG.debug("qgis: %s", line)


def qgis_python_plugins_dir() -> str:
    """The folder of QGIS's bundled Python plugins (`processing` among them), found the way QGIS finds it:
    `<pkgDataPath>/python/plugins` (Debian: /usr/share/qgis, OSGeo4W: <root>/apps/qgis[-ltr], macOS:
    QGIS.app/Contents/Resources, conda: <env>/share/qgis). Needs an initialised QgsApplication."""
    from qgis.core import QgsApplication

    return os.path.join(QgsApplication.pkgDataPath(), "python", "plugins")


#: Projects made by `_private_project`, destroyed before QGIS exits.
_PRIVATE_PROJECTS: list = []


def _private_project():
    """A QgsProject for one headless run, destroyed by `_headless_qgis` before QGIS exits, whoever still
    refers to it: a project that outlives `exitQgis` (a failed Processing run's traceback keeps it and its
    context alive) crashes the interpreter's shutdown on QGIS 3.40 (its style settings reach into the
    application's style model, gone by then)."""
    from qgis.core import QgsProject

    project = QgsProject()
    _PRIVATE_PROJECTS.append(project)
    return project


def _destroy_private_projects() -> None:
    from qgis.PyQt import sip

    while _PRIVATE_PROJECTS:
        project = _PRIVATE_PROJECTS.pop()
        if not sip.isdeleted(project):
            project.removeAllMapLayers()
            sip.delete(project)


def _make_processing_importable() -> None:
    """Outside a QGIS executable the `processing` plugin is not on sys.path: add QGIS's plugin folder."""
    try:
        import processing  # noqa: F401
    except ImportError:
        folder = qgis_python_plugins_dir()
        if not os.path.isdir(os.path.join(folder, "processing")):
            raise QuickSamError(f"QGIS's Processing plugin was not found in '{folder}'; install QGIS with its "
                                "Python plugins (Debian: apt install python3-qgis qgis-providers)") from None
        if folder not in sys.path:
            sys.path.append(folder)


@contextlib.contextmanager
def _headless_qgis() -> Iterator[None]:
    """A QGIS application (offscreen) with Processing and the QuickSAM provider, for this process.

    Reuses a running QgsApplication (e.g. inside QGIS or pytest-qgis) and then leaves it running.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import qInstallMessageHandler

    own_app = QgsApplication.instance() is None
    if own_app:
        qInstallMessageHandler(lambda _mode, _context, message: LOG.debug("qt: %s", message))
        app = QgsApplication([], False)
        app.initQgis()
    try:
        _make_processing_importable()
        from processing.core.Processing import Processing

        Processing.initialize()
        registry = QgsApplication.processingRegistry()
        if registry.providerById("quicksam") is None:
            from .ui.algorithms.provider import QuickSamProvider

            registry.addProvider(QuickSamProvider())
        yield
    finally:
        if own_app:
            gc.collect()  # QGIS objects held in reference cycles (tracebacks) must go before QGIS exits
            _destroy_private_projects()
            app.exitQgis()
            qInstallMessageHandler(None)  # no Python callback may outlive the interpreter


def _one_line(message: str) -> str:
    """A Processing error as one line, without Processing's "Unable to execute algorithm" preamble."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].lower().startswith("unable to execute algorithm"):
        lines = lines[1:]
    text = " ".join(lines) or "the segmentation failed"
    return text[0].lower() + text[1:] if text[:2].istitle() else text


def _command_line_prompt_layer(args, crs):
    """An OGR layer (an in-memory GeoJSON, which may mix points and a polygon) holding the --point and --box
    prompts of one object: fields `object` (all 1) and `label`; coordinates in `crs`."""
    from osgeo import gdal
    from qgis.core import QgsVectorLayer

    features = [{"type": "Feature", "properties": {"object": 1, "label": label},
                 "geometry": {"type": "Point", "coordinates": [x, y]}} for x, y, label in args.point or []]
    for xmin, ymin, xmax, ymax in args.box or []:
        ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
        features.append({"type": "Feature", "properties": {"object": 1, "label": 1},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path = f"/vsimem/quicksam-prompts-{os.getpid()}-{id(args)}.geojson"
    gdal.FileFromMemBuffer(path, json.dumps({"type": "FeatureCollection", "features": features}).encode())
    layer = QgsVectorLayer(path, "prompts", "ogr")
    layer.setCrs(crs)
    return layer, path


def _open_prompt_layer(args, crs):
    """The prompt layer: the --prompts file, or the --point/--box prompts as one object (fields `object`
    and `label`). Returns (layer, group field, label field, /vsimem path to unlink or None)."""
    from qgis.core import QgsVectorLayer

    if not args.prompts:
        layer, vsimem = _command_line_prompt_layer(args, crs)
        return layer, "object", "label", vsimem
    layer = QgsVectorLayer(str(args.prompts), "prompts", "ogr")
    if not layer.isValid():
        raise QuickSamError(f"'{args.prompts}' cannot be opened as a vector layer of points or polygons")
    if args.prompts_crs:
        layer.setCrs(crs)
    return layer, args.group_field or "", args.label_field or "", None


def _run_algorithm(algorithm_id: str, parameters: dict, project, feedback) -> Dict[str, object]:
    """processing.run of one of our algorithms on a private project; its layers are released before
    QGIS exits. QuickSamError (one line) when the algorithm refuses or fails."""
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingException

    from .ui.algorithms.algorithm_base import mark_command_line

    context = QgsProcessingContext()
    context.setProject(project)
    context.setFeedback(feedback)
    mark_command_line(context)  # the algorithm's advice then names our options (--overwrite, --prompts-crs)
    try:
        return processing.run(algorithm_id, parameters, feedback=feedback, context=context,
                              onFinish=lambda *_: None)
    except QgsProcessingException as exc:
        raise QuickSamError(_one_line(str(exc))) from None
    finally:
        project.removeAllMapLayers()


def _run_segment_algorithm(args, partial: Path, events: EventWriter) -> Tuple[Dict[str, object], List[str]]:
    """Run quicksam:segmentprompts into `partial`; (results, skipped-object messages). With --progress-json,
    Processing's progress becomes `progress` events in percent.

    The prompt layer belongs to a private project and goes with it before this returns: a QGIS layer
    still alive when QGIS exits crashes the interpreter's shutdown, and Processing keeps a reference to
    the parameters of a failed run, so the layer is passed by id, never as an object.
    """
    from osgeo import gdal
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsProcessingException,
        QgsProcessingFeedback,
        QgsProcessingOutputLayerDefinition,
    )

    from .ui.algorithms.segment_algorithm import SegmentPromptsAlgorithm, open_store
    from .ui.layers import raster_crs

    class CollectingFeedback(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.errors: List[str] = []

        def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N803 - Qt's name
            self.errors.append(error)

    try:
        store = open_store(str(args.store))
    except QgsProcessingException as exc:
        raise QuickSamError(_one_line(str(exc))) from None
    crs = raster_crs(store)
    if args.prompts_crs:
        crs = QgsCoordinateReferenceSystem(args.prompts_crs)
        if not crs.isValid():
            raise QuickSamError(f"--prompts-crs '{args.prompts_crs}' is not a CRS QGIS knows; use an authority "
                                "code such as EPSG:4326 (or a WKT or PROJ string)")
    project = _private_project()
    layer, group_field, label_field, vsimem = _open_prompt_layer(args, crs)
    layer_id = layer.id()
    project.addMapLayer(layer, False)  # the project owns it now
    del layer
    destination = QgsProcessingOutputLayerDefinition(str(partial))
    destination.createOptions = {"layerName": SEGMENT_LAYER}
    algorithm = SegmentPromptsAlgorithm
    parameters = {
        algorithm.STORE: str(args.store), algorithm.PROMPTS: layer_id, algorithm.GROUP_FIELD: group_field,
        algorithm.LABEL_FIELD: label_field, algorithm.MASK_MODE: MASK_MODES.index(args.mask_mode),
        algorithm.SIMPLIFY: args.simplify, algorithm.MIN_AREA: args.min_area,
        algorithm.KEEP_HOLES: not args.fill_holes, algorithm.OUTPUT: destination,
    }
    feedback = CollectingFeedback()
    if events.as_json:
        feedback.progressChanged.connect(lambda percent: _forward_percent(events, feedback, percent))
    try:
        results = _run_algorithm("quicksam:segmentprompts", parameters, project, feedback)
    except QuickSamError:
        reason = None if args.prompts else _command_line_object_problem(feedback.errors)
        if reason is None:
            raise
        raise QuickSamError(f"nothing was segmented: {reason}") from None
    finally:
        if vsimem:
            gdal.Unlink(vsimem)
    summary = {key: results.get(key) for key in (algorithm.SEGMENTED, algorithm.SKIPPED)}
    return summary, [message for message in feedback.errors if " skipped: " in message]


def _command_line_object_problem(errors: Sequence[str]) -> Optional[str]:
    """Why the one object of --point/--box could not be segmented, from the algorithm's reports; None if
    none says. The object is ours, not the user's (they gave no layer), so only its reason is told."""
    from .interactive.prompt_input import SkippedObject

    for message in errors:
        skipped = SkippedObject.from_message(message)
        if skipped is not None:
            return skipped.reason
    return None


def _forward_percent(events: EventWriter, feedback, percent: float) -> None:
    """A Processing progress (percent) as a `progress` event; a closed output cancels the algorithm."""
    events.progress(round(percent, 2), 100, "percent")
    if events.closed:
        feedback.cancel()


def _in_headless_qgis(work: Callable[[], T]) -> T:
    """Run `work()` in a headless QGIS (see `_headless_qgis`) with QGIS's own output captured; a QuickSamError
    it raises is re-raised as plain text once QGIS is gone (its traceback's frames hold QGIS objects)."""
    error: Optional[str] = None
    result = None
    with _captured_process_output(), warnings.catch_warnings(), _headless_qgis():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        try:
            result = work()
        except QuickSamError as exc:
            error = str(exc)
    if error is not None:
        raise QuickSamError(error)
    return result


def _open_store_before_qgis(store: Path) -> None:
    """Open an existing store (its manifest and tile log are checked) before QGIS starts, so that a damaged one
    is refused in a moment rather than after seconds; the algorithm opens it again (and words a missing one)."""
    if store.exists():
        from .core.store import FeatureStore

        FeatureStore.open(store)


def _check_output_folder_writable(output: Path, option: str = "--output") -> None:
    """QuickSamError before any work when no file can be created beside `output` (a read-only store, a
    folder of someone else's)."""
    from .core.diskspace import folder_unwritable_reason

    reason = folder_unwritable_reason(output.parent)
    if reason is not None:
        raise QuickSamError(f"cannot write '{output}' ({reason}); choose another {option}")


def _cmd_segment(args, events: EventWriter) -> int:
    from .interactive.output_formats import remove_gpkg, write_layer

    _check_segment_prompts(args)
    wanted = Path(args.output).expanduser().absolute()
    if wanted.parent.is_dir():  # a missing folder is told by the output check
        _check_output_folder_writable(wanted)
    destination = _check_segment_output(args.output, args.overwrite, args.layer)
    output = destination.path
    _open_store_before_qgis(args.store)
    events.start(store=str(args.store), output=str(output))
    # The run writes a GeoPackage beside the output (same file system); only a finished run is written to
    # the output, in its format, without touching the output's other layers.
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}.gpkg")

    def segment_and_write():  # in QGIS's lifetime: exitQgis unloads GDAL's drivers
        summary, skipped = _run_segment_algorithm(args, partial, events)
        return summary, skipped, write_layer(partial, SEGMENT_LAYER, destination, args.overwrite)

    try:
        summary, skipped, written = _in_headless_qgis(segment_and_write)
    finally:
        remove_gpkg(partial)
    for message in skipped:
        events.warning(message)
    if written.kept_layers:
        events.info(written.message())
    events.finished({"output": str(output), "layer": written.layer, "objects_segmented": summary["SEGMENTED"],
                     "objects_skipped": summary["SKIPPED"]})
    return 0


def _run_segment_all_algorithm(args, events: EventWriter) -> Dict[str, object]:
    """Run quicksam:segmentall on args; its results. Cancellation (Ctrl+C) keeps finished tiles."""

    from .ui.algorithms.segment_all_algorithm import SegmentAllAlgorithm as Algorithm

    project = _private_project()
    aoi_id = ""
    if args.aoi:
        from qgis.core import QgsVectorLayer

        if not args.aoi.is_file():
            raise QuickSamError(f"the area of interest file '{args.aoi}' does not exist")
        layer = QgsVectorLayer(str(args.aoi), "aoi", "ogr")
        if not layer.isValid():
            raise QuickSamError(f"'{args.aoi}' cannot be opened as a polygon layer")
        aoi_id = layer.id()
        project.addMapLayer(layer, False)
        del layer
    parameters = {
        Algorithm.STORE: str(args.store), Algorithm.AOI: aoi_id or None,
        Algorithm.EXTENT: ",".join(repr(v) for v in (args.extent[0], args.extent[2], args.extent[1],
                                                      args.extent[3])) if args.extent else None,
        Algorithm.POINTS_PER_SIDE: args.points_per_side, Algorithm.POINTS_PER_BATCH: args.points_per_batch,
        Algorithm.PRED_IOU_THRESH: args.pred_iou_thresh, Algorithm.STABILITY_SCORE_THRESH: args.stability_score_thresh,
        Algorithm.STABILITY_SCORE_OFFSET: args.stability_score_offset, Algorithm.BOX_NMS_THRESH: args.box_nms_thresh,
        Algorithm.MIN_MASK_REGION_AREA: args.min_mask_region_area,
        Algorithm.MASK_MODE: MASK_MODES.index(args.mask_mode), Algorithm.MIN_OBJECT_AREA: args.min_object_area,
        Algorithm.MAX_OBJECT_AREA: args.max_object_area, Algorithm.SIMPLIFY: args.simplify,
        Algorithm.OVERWRITE: args.overwrite, Algorithm.LAYER_NAME: args.layer, Algorithm.OUTPUT: str(args.output),
    }
    results = _run_algorithm("quicksam:segmentall", parameters, project, _tile_feedback(events))
    output = Path(results[Algorithm.OUTPUT])
    layer = _layer_written(output, args.layer)
    return {"output": str(output), "layer": layer, "objects": results[Algorithm.OBJECTS],
            "tiles": results[Algorithm.TILES], "message": _other_layers_message(output, layer)}


def _layer_written(output: Path, layer: str) -> Optional[str]:
    """`layer` if `output` is a multi-layer file (a GeoPackage), else None: the file is the layer."""
    from .interactive.output_formats import format_for

    return layer if format_for(output).multi_layer else None


def _other_layers_message(output: Path, layer: Optional[str]) -> Optional[str]:
    """'wrote layer L into OUT; its other layers (...) are kept' when OUT holds other layers, else None."""
    from .interactive.output_formats import WrittenLayer, layer_names

    others = tuple(name for name in (layer_names(output) or []) if name != layer) if layer else ()
    return WrittenLayer(output, layer, others).message() if others else None


def _tile_feedback(events: EventWriter):
    """A Processing feedback that turns each finished tile of quicksam:segmentall into a `progress` event
    (unit "tiles"); a closed output cancels the run (its finished tiles are kept)."""
    from .ui.algorithms.segment_all_algorithm import TileProgressFeedback

    class EventFeedback(TileProgressFeedback):
        def tile_finished(self, event) -> None:
            events.progress(event.done, event.total, "tiles", tile=event.tile_id, objects=event.objects)
            if events.closed:
                self.cancel()

    return EventFeedback()


def _cmd_segment_all(args, events: EventWriter) -> int:
    args.output = _check_segment_output(args.output, args.overwrite, args.layer).path
    if not args.store.exists():
        raise QuickSamError(f"the feature store '{args.store}' does not exist; encode the raster first "
                            "(quicksam encode RASTER STORE)")
    _open_store_before_qgis(args.store)
    events.start(store=str(args.store), output=str(args.output))
    summary = _in_headless_qgis(lambda: _run_segment_all_algorithm(args, events))
    message = summary.pop("message")
    if message:
        events.info(message)
    events.finished(summary)
    return 0


def _command_of(args) -> str:
    """The command as events name it: "encode", "segment-all", "checkpoints download", ..."""
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if args.command == "checkpoints" and action else args.command


def _is_closed_pipe(exc: BaseException) -> bool:
    return isinstance(exc, (BrokenPipeError, OutputClosed)) or (
        isinstance(exc, OSError) and exc.errno == errno.EPIPE)


def _run_command(args, events: EventWriter) -> int:
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


def _silence_stdout() -> None:
    """Point stdout at the null device, so that Python's final flush into a closed pipe cannot fail."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Optional[Sequence[str]] = None) -> int:
    # GDAL 3.7+ warns once per process that its exception mode was not chosen; QuickSAM's GDAL code sets
    # the mode it needs where it calls GDAL (interactive/gdal_errors.py), so the warning is noise here,
    # and it would break the one-line error promise.
    warnings.filterwarnings("ignore", message=r"Neither (gdal|ogr|osr)\.UseExceptions\(\) nor", category=FutureWarning)
    args = build_parser().parse_args(argv)
    events = EventWriter(as_json=getattr(args, "progress_json", False), command=_command_of(args))
    handler = _EventLogHandler(events)
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    try:
        status = _run_command(args, events)
    finally:
        LOG.removeHandler(handler)
        events.close()
    if events.closed:
        # The reader has gone (`quicksam ... | head -3`): stop quietly, as a command killed by SIGPIPE
        # does; finished tiles are kept and the same command resumes.
        _silence_stdout()
        return EXIT_OUTPUT_CLOSED
    return status


if __name__ == "__main__":
    sys.exit(main())
