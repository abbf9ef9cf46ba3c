"""The `quicksam` command: encode rasters, inspect stores, manage checkpoints.

Bad input exits with status 1 and one line on stderr ("quicksam: error: ..."), never a traceback;
an interrupted or cancelled run exits with 130 and keeps every finished tile. With --progress-json,
progress goes to stdout as one JSON object per line (the Processing algorithm reads it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Callable, List, Optional, Sequence, TextIO

from .encoder.catalogue import CHECKPOINTS, DEFAULT_MODEL, MODELS, default_checkpoint_for
from .encoder.errors import Cancelled, QuickSamError
from .encoder.tiling import DEFAULT_OVERLAP

LOG = logging.getLogger("quicksam")
EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 2
EXIT_CANCELLED = 130


class EventWriter:
    """Writes progress either as JSON lines (for programs) or as short human lines (to stderr)."""

    def __init__(self, as_json: bool, stream: Optional[TextIO] = None):
        self.as_json = as_json
        self.stream = stream or (sys.stdout if as_json else sys.stderr)
        self._lock = threading.Lock()

    def emit(self, event: str, **fields) -> None:
        with self._lock:
            if self.as_json:
                self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            elif event == "progress":
                self.stream.write(f"\r{fields['done']}/{fields['total']} tiles ({fields['percent']:.0f}%)")
                if fields["done"] == fields["total"]:
                    self.stream.write("\n")
            elif event == "log":
                self.stream.write(fields["message"] + "\n")
            self.stream.flush()


class _EventLogHandler(logging.Handler):
    def __init__(self, events: EventWriter):
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        self.events.emit("log", level=record.levelname.lower(), message=record.getMessage())


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
    encode.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                        help="overlap of neighbouring tiles in pixels (default %(default)s)")
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
    encode.add_argument("--progress-json", action="store_true", help="progress as JSON lines on stdout")
    encode.set_defaults(handler=_cmd_encode)


def _add_other_parsers(commands) -> None:
    info = commands.add_parser("info", help="print a JSON summary of a feature store")
    info.add_argument("store", type=Path)
    info.set_defaults(handler=_cmd_info)

    checkpoints = commands.add_parser("checkpoints", help="list, download or register checkpoints")
    actions = checkpoints.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="official and registered checkpoints, and which are cached")
    download = actions.add_parser("download", help="download a checkpoint into the user cache")
    download.add_argument("name")
    register = actions.add_parser("register", help="register a custom checkpoint (e.g. a micro-sam fine-tune)")
    register.add_argument("name")
    register.add_argument("--model", required=True, choices=sorted(MODELS))
    source = register.add_mutually_exclusive_group(required=True)
    source.add_argument("--path")
    source.add_argument("--url")
    register.add_argument("--sha256", help="expected SHA-256 of a --url checkpoint")
    checkpoints.set_defaults(handler=_cmd_checkpoints)


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line, like every other error."""

    def error(self, message: str) -> None:
        self.exit(EXIT_BAD_INPUT, f"quicksam: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="quicksam", description="Segment Anything for geospatial rasters.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_encode_parser(commands)
    _add_other_parsers(commands)
    return parser


def _download_progress(events: EventWriter) -> Callable[[int, Optional[int]], None]:
    state = {"last": -1}

    def report(done: int, total: Optional[int]) -> None:
        percent = int(100 * done / total) if total else -1
        if percent != state["last"]:
            state["last"] = percent
            events.emit("download", done=done, total=total, percent=percent)
    return report


def _resolve_weights(args, events: EventWriter):
    from .encoder.checkpoints import resolve_checkpoint

    if args.random_weights:
        events.emit("log", level="warning", message="using seeded random weights: the masks will be "
                    "meaningless; the store records this")
        return None
    name = args.checkpoint or default_checkpoint_for(args.model).name
    return resolve_checkpoint(name, model=args.model, progress=_download_progress(events))


def _cmd_encode(args, events: EventWriter) -> int:
    from .encoder.pipeline import EncodeRequest, encode_raster

    checkpoint = _resolve_weights(args, events)
    request = EncodeRequest(
        raster=args.raster, store=args.store, model=args.model, checkpoint=checkpoint, seed=args.seed,
        bands=args.bands, overlap=args.overlap, extent=args.extent, batch_size=args.batch_size,
        device=args.device, tile_size=args.tile_size, stretch=args.stretch, feature_dtype=args.feature_dtype)

    def on_progress(event) -> None:
        events.emit("progress", done=event.done, total=event.total, percent=round(event.percent, 2),
                    tile=event.tile_id, status=event.status)

    def on_start(store, todo: int) -> None:
        events.emit("start", store=str(store.root), raster=args.raster, tiles=len(store.grid), todo=todo)

    store, stats = encode_raster(request, progress=on_progress, started=on_start)
    summary = store.summary()
    events.emit("finished", store=str(store.root), tile_index=str(store.root / "tile_index.gpkg"),
                summary=summary, seconds=round(stats.total_seconds, 3))
    if not events.as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def _cmd_info(args, events: EventWriter) -> int:
    from .encoder.store import FeatureStore

    sys.stdout.write(json.dumps(FeatureStore.open(args.store).summary(), indent=2) + "\n")
    return 0


def _cmd_checkpoints(args, events: EventWriter) -> int:
    from .encoder import checkpoints

    if args.action == "list":
        rows = []
        for name, spec in checkpoints.all_checkpoints().items():
            cached = checkpoints.cached_checkpoint(spec.model) if name in CHECKPOINTS else None
            rows.append({"name": name, "model": spec.model, "url": spec.url, "sha256": spec.sha256,
                         "official": name in CHECKPOINTS, "cached": str(cached.path) if cached else None})
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif args.action == "download":
        resolved = checkpoints.resolve_checkpoint(args.name, progress=_download_progress(events))
        sys.stdout.write(json.dumps({"name": resolved.name, "path": str(resolved.path),
                                     "sha256": resolved.sha256}) + "\n")
    else:
        spec = checkpoints.register_checkpoint(args.name, args.model, path=args.path, url=args.url,
                                               sha256=args.sha256)
        sys.stdout.write(json.dumps({"registered": spec.name, "model": spec.model, "url": spec.url}) + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    events = EventWriter(as_json=getattr(args, "progress_json", False))
    handler = _EventLogHandler(events)
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    try:
        return args.handler(args, events)
    except Cancelled as exc:
        sys.stderr.write(f"quicksam: cancelled: {exc}\n")
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        sys.stderr.write("quicksam: interrupted; finished tiles are kept, run the same command to resume\n")
        return EXIT_CANCELLED
    except (QuickSamError, ValueError) as exc:
        sys.stderr.write(f"quicksam: error: {exc}\n")
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if os.environ.get("QUICKSAM_DEBUG"):
            raise
        sys.stderr.write(f"quicksam: error: unexpected {type(exc).__name__}: {exc} "
                         "(set QUICKSAM_DEBUG=1 for details and report it)\n")
        return EXIT_INTERNAL
    finally:
        LOG.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
