"""`quicksam encode-tile`: add one on-demand tile to a store, centred on prompts (no QGIS; encoder/on_demand.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .events import EventWriter, add_events_option
from .options import parse_box, parse_point

if TYPE_CHECKING:
    from ..core.store import FeatureStore
    from ..core.tiling import Tile
    from ..encoder.tile_pipeline import ProgressEvent


def add_encode_tile_parser(commands: argparse._SubParsersAction) -> None:
    """`quicksam encode-tile STORE --point X,Y ... [--box ...] [--level F]`."""
    parser = commands.add_parser(
        "encode-tile", help="encode one extra tile of a store, centred on prompts no tile holds",
        description="Add one on-demand tile to a feature store: a tile centred on the given prompts (points and/or a "
                    "box, in the raster's CRS), for prompts no tile of the store holds (across a tile border, or "
                    "outside the encoded area). A tile that already holds them with a margin is reused: nothing is "
                    "encoded twice. The tile is recorded in the manifest, the tile log and the tile index like any "
                    "other (field extra = 1); an interrupted run is finished by the same command. Model, weights, "
                    "bands and stretch are the store's own.")
    parser.add_argument("store", type=Path, help="feature store folder written by 'quicksam encode'")
    parser.add_argument("--point", type=parse_point, action="append", metavar="X,Y",
                        help="a prompt the tile must hold (the raster's CRS); repeat for more. Negative X: "
                             "write --point=X,Y")
    parser.add_argument("--box", type=parse_box, metavar="XMIN,YMIN,XMAX,YMAX",
                        help="a box the tile must hold (clipped to the raster)")
    parser.add_argument("--level", type=float, default=None, metavar="FACTOR",
                        help="the level to add the tile to, as a factor of the finest level's pixel size (1 = the "
                             "finest, full resolution); default: the finest level where one tile holds the prompts "
                             "with a margin")
    parser.add_argument("--raster", help="the raster, when it is no longer where the store says it was")
    parser.add_argument("--checkpoint", help="the store's checkpoint file or name, when it cannot be found by "
                                             "itself (it must be the one the store was encoded with)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    add_events_option(parser)
    parser.set_defaults(handler=_cmd_encode_tile)


def _cmd_encode_tile(args: argparse.Namespace, events: EventWriter) -> int:
    from ..core.errors import QuickSamError
    from ..encoder.on_demand import TileRequest, encode_tile_at
    from ..encoder.online_sources import resolve_source

    if not args.point and not args.box:
        raise QuickSamError("give the prompts the tile must hold: one or more --point X,Y and/or a --box")
    raster = resolve_source(args.raster) if args.raster else None
    request = TileRequest(store=args.store, points=tuple((x, y) for x, y, _ in args.point or []), box=args.box,
                          level=args.level, raster=raster, checkpoint=args.checkpoint, device=args.device)

    def on_progress(event: ProgressEvent) -> None:
        events.progress(event.done, event.total, "tiles", tile=event.tile_id, status=event.status)
        events.check_open()

    def on_start(level: FeatureStore, tile: Tile, to_encode: bool) -> None:
        events.start(store=str(args.store), level=str(level.root), factor=level.manifest.pixel_grid.factor,
                     tile=tile.tile_id, tiles=1, todo=int(to_encode))

    outcome = encode_tile_at(request, progress=on_progress, started=on_start)
    grid = outcome.level.manifest.pixel_grid
    summary = {"store": str(args.store), "level": outcome.folder, "factor": grid.factor, "resolution": grid.resolution,
               "tile_id": outcome.tile.tile_id, "extra": outcome.tile.extra, "encoded": outcome.encoded,
               "status": outcome.level.status(outcome.tile), "tiles": len(outcome.level.grid)}
    events.finished(summary, indent=2, store=str(args.store), tile_index=str(Path(args.store) / "tile_index.gpkg"),
                    seconds=round(outcome.stats.total_seconds, 3))
    return 0
