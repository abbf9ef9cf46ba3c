"""Argument types and help texts shared by the commands' parsers."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .events import EXIT_BAD_INPUT

#: The layer the Processing run writes into its private GeoPackage (the output's own layer is --layer).
SEGMENT_LAYER = "segments"
#: --output help: the format comes from the extension (interactive/output_formats.py).
OUTPUT_HELP = ("vector file for the polygons (raster CRS), its format by its extension: .gpkg (GeoPackage: the "
               "layer --layer is added, its other layers are kept), .shp, .geojson/.json (GeoJSON in the raster's "
               "CRS, stated by its EPSG code, not reprojected to EPSG:4326), .fgb, .parquet (where GDAL has "
               "GeoParquet) or another vector format GDAL writes")
LAYER_HELP = "layer name in a GeoPackage (default %(default)s); the file's other layers are kept"


def parse_ints(text: str) -> List[int]:
    """Band numbers from "3,2,1"."""
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated band numbers like 3,2,1, got '{text}'") from None


def parse_factors(text: str) -> Tuple[float, ...]:
    """Level factors from "1,4,16" (core/levels.parse_factors) for --levels."""
    from ..core.levels import parse_factors as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_extent(text: str) -> tuple:
    """(xmin, ymin, xmax, ymax) from "xmin,ymin,xmax,ymax" (the raster's CRS)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected xmin,ymin,xmax,ymax in the raster's CRS, got '{text}'")
    return values


def parse_point(text: str) -> Tuple[float, float, int]:
    """(x, y, label) from "X,Y" or "X,Y,LABEL" (label 1 = foreground, the default; 0 = background)."""
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


def parse_box(text: str) -> Tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) from "XMIN,YMIN,XMAX,YMAX", a box of positive size."""
    xmin, ymin, xmax, ymax = parse_extent(text)
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)) or xmin >= xmax or ymin >= ymax:
        raise argparse.ArgumentTypeError(f"expected XMIN,YMIN,XMAX,YMAX with XMIN < XMAX and YMIN < YMAX, got '{text}'")
    return xmin, ymin, xmax, ymax


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line, like every other error.

    `add_arguments(parser)`, when given, adds the parser's arguments on its first use (parsing or help):
    what they need to know (segment-all's defaults come from the decoding stage) is then imported only
    when that command runs, so that `quicksam encode` never loads it.
    """

    def __init__(self, *args: Any, add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def error(self, message: str) -> None:
        if message.startswith("the following arguments are required") and (
                {"--output-dir", "--next-to-inputs"} & {arg.split("=")[0] for arg in sys.argv[1:]}):
            message = ("no inputs: give the files, folders or quoted glob patterns (e.g. 'data/*.tif') to process "
                       "before --output-dir/--next-to-inputs")
        self.exit(EXIT_BAD_INPUT, f"quicksam: error: {message} (see '{self.prog} --help')\n")

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Optional[argparse.Namespace] = None
                         ) -> Tuple[argparse.Namespace, List[str]]:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def _complete(self) -> None:
        if self._add_arguments is not None:
            add_arguments, self._add_arguments = self._add_arguments, None
            add_arguments(self)


def parse_devices(text: str) -> Tuple[str, ...]:
    """Devices from "cuda:0,cuda:1" for --devices (one local worker each)."""
    devices = tuple(item for item in text.replace(" ", "").split(",") if item)
    if not devices:
        raise argparse.ArgumentTypeError(f"expected devices like cuda:0,cuda:1, got '{text}'")
    return devices


def add_cluster_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--workers, --scheduler and --devices (core/cluster.py, docs/scaling.md); `what` names the tasks
    ("tiles are encoded", "tiles are decoded")."""
    group = parser.add_argument_group("cluster (docs/scaling.md)")
    group.add_argument("--workers", type=int, default=0,
                       help=f"worker processes on this machine (an embedded Dask LocalCluster) in which {what}, "
                            "each loading the model once (default 0: this process only)")
    group.add_argument("--scheduler", metavar="tcp://HOST:8786",
                       help=f"an existing Dask cluster's scheduler: {what} on its workers, which must see the "
                            "raster and the store at the same paths")
    group.add_argument("--devices", type=parse_devices, default=(), metavar="cuda:0,cuda:1",
                       help="the device of each local worker in turn (one worker per GPU; default: --device)")


def cluster_settings(args: argparse.Namespace) -> Any:
    """The `core.cluster.ClusterSettings` of --workers/--scheduler/--devices (checked: QuickSamError);
    --devices without --workers means one worker per device."""
    from ..core.cluster import ClusterSettings

    workers = args.workers or (len(args.devices) if args.devices and not args.scheduler else 0)
    settings = ClusterSettings(scheduler=args.scheduler, workers=workers, devices=tuple(args.devices))
    settings.check()
    return settings
