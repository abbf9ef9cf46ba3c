"""Encode one on-demand tile of a store, centred on prompts no tile holds (core/on_demand.py; no QGIS).

`encode_tile_at` is what `quicksam encode-tile` runs (and through it the dock and quicksam:segmentprompts,
in the encoder's process). Under the store's lock it places the tile (core/on_demand.tile_for_prompts: an
existing tile that already holds the prompts with a margin is reused, a pending one from a killed run is
finished), appends a new one to its level's manifest grid (an atomic rewrite), and encodes it through the same
`TilePipeline` as `quicksam encode`: a tile log line with its CRC, its valid-pixel mask, then the tile
indexes. A run killed after the manifest was written leaves a pending extra tile that the next run (this
one with the same prompts, or the store's `quicksam encode` command) finishes.

The model, weights, bands and stretch are the store's own (its manifest); the weights are checked against
the store's SHA-256 before any tile is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple

from ..core.errors import QuickSamError
from ..core.geo import map_to_pixel
from ..core.levels import format_factor, same_factor
from ..core.logger import LOGGER
from ..core.on_demand import fits_one_tile, pixel_span, prompt_margin, tile_for_prompts, with_tile
from ..core.store import DECODER_ONNX, FORMAT_VERSION, STATUS_DONE, STATUS_NODATA, FeatureStore
from ..core.store_levels import level_folder_of, level_stores
from ..core.tiling import Tile
from .normalise import Stretch
from .online_sources import is_network_source
from .pipeline import EncodeRequest, load_model_for, random_weights_identity
from .raster import describe_raster, raster_fingerprint_rasterio
from .store_guard import plain_write_errors, refuse_series_store, store_lock
from .tile_index import write_tile_index
from .tile_pipeline import CancelCheck, EncodeStats, ProgressCallback, ProgressEvent, TilePipeline, never_cancelled

if TYPE_CHECKING:
    from .checkpoints import ResolvedCheckpoint
    from .models import SegmentModel

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class TileRequest:
    """One on-demand tile: the store folder, the prompts it must hold (points (x, y) and a box (xmin, ymin,
    xmax, ymax), map coordinates in the raster's CRS), and optionally the level (`level`: a factor of the
    finest level's pixel size, as levels are counted when encoding; None = the finest level where one tile
    holds the prompts with a margin), the raster (default: where the manifest says it was), a checkpoint
    (default: the store's, found by its path or name) and the device."""

    store: Path
    points: Tuple[Tuple[float, float], ...] = ()
    box: Optional[Box] = None
    level: Optional[float] = None
    raster: Optional[str] = None
    checkpoint: Optional[str] = None
    device: str = "auto"


@dataclass(frozen=True)
class TileOutcome:
    """What `encode_tile_at` did: the level's store (read again) and its folder relative to the store ("."
    the finest), the tile serving the prompts, whether it was encoded by this run (False: reused), and the
    run's timings."""

    level: FeatureStore
    folder: str
    tile: Tile
    encoded: bool
    stats: EncodeStats


def encode_tile_at(request: TileRequest, progress: Optional[ProgressCallback] = None,
                   cancelled: Optional[CancelCheck] = None, model: Optional[SegmentModel] = None,
                   started: Optional[Callable[[FeatureStore, Tile, bool], None]] = None) -> TileOutcome:
    """Make sure one tile of the store holds the request's prompts, encoding one if none does (see the module).

    `started(level, tile, to_encode)` is called once the tile is placed (and, when it is new, recorded in the
    manifest). Progress events count this one tile
    (its id prefixed with its level's folder for a coarser level). The store is locked while this runs
    (LockBusy if another run writes it). QuickSamError, one line saying what to do, for prompts that are
    outside the raster or farther apart than one tile, a level the store lacks, an unfinished store, a
    changed raster, other weights; DiskFull and Cancelled as `quicksam encode` (a placed tile stays pending
    and the next run finishes it).
    """
    if not request.points and request.box is None:
        raise QuickSamError("give the prompts the tile must hold: points and/or a box, in the raster's CRS")
    root_path = Path(request.store)
    refuse_series_store(root_path, "an on-demand tile")
    FeatureStore.open(root_path)   # a missing or damaged store is refused before a lock is taken
    with store_lock(root_path), plain_write_errors(root_path):
        levels = level_stores(FeatureStore.open(root_path))   # read again under the lock
        level, pixels = choose_level(levels, request)
        folder = level_folder_of(levels[0], level)
        with _level_lock(level, folder):
            return _place_and_encode(request, level, folder, pixels, progress, cancelled, model, started)


@contextlib.contextmanager
def _level_lock(level: FeatureStore, folder: str) -> Iterator[None]:
    """The lock of a coarser level's own folder (the root's is already held)."""
    if folder == ".":
        yield
        return
    with store_lock(level.root), plain_write_errors(level.root):
        yield


def choose_level(levels: List[FeatureStore], request: TileRequest) -> Tuple[FeatureStore, List[Tuple[float, float]]]:
    """The level to encode at and the prompts' positions in its pixels: `request.level`, else the finest
    level where one tile holds them with the margin, else the finest where one holds them at all.
    QuickSamError when the store lacks that level or no tile of it can hold the prompts."""
    finest = levels[0].manifest.pixel_grid.factor
    if request.level is not None:
        chosen = [level for level in levels if same_factor(level.manifest.pixel_grid.factor / finest, request.level)]
        if not chosen:
            listed = ", ".join(format_factor(level.manifest.pixel_grid.factor / finest) for level in levels)
            raise QuickSamError(f"store '{levels[0].root}' has no level {format_factor(request.level)}; its levels "
                                f"are {listed} (factors of the finest level's pixel size)")
        candidates = chosen
    else:
        candidates = levels
    placed = [(level, level_pixels(level, request.points, request.box)) for level in candidates]
    for margin in (True, False):
        for level, pixels in placed:
            size = level.grid.tile_size
            if fits_one_tile(pixels, size, prompt_margin(size) if margin else 0.0):
                return level, pixels
    level, pixels = placed[-1]
    col0, row0, col1, row1 = pixel_span(pixels)
    advice = ("choose a coarser --level, or" if request.level is not None and len(levels) > 1
              else "add a coarser level to the store (quicksam encode with more levels), or")
    raise QuickSamError(f"the prompts span {math.ceil(col1 - col0)} x {math.ceil(row1 - row0)} px at level "
                        f"{format_factor(level.manifest.pixel_grid.factor / finest)}, more than one "
                        f"{level.grid.tile_size} px tile holds; {advice} place the prompts closer together")


def level_pixels(level: FeatureStore, points: Sequence[Tuple[float, float]], box: Optional[Box]
                 ) -> List[Tuple[float, float]]:
    """The points and the box's corners (map coordinates, raster CRS) as pixel positions (col, row) of
    `level`, the box clipped to the raster. QuickSamError for a point outside the raster or a box wholly
    outside it."""
    grid, geotransform = level.grid, level.geotransform
    pixels = []
    for x, y in points:
        col, row = map_to_pixel(geotransform, x, y)
        if not (0 <= col <= grid.raster_width and 0 <= row <= grid.raster_height):
            raise QuickSamError(f"the point at {x:.10g},{y:.10g} is outside the raster; place prompts inside it "
                                "(in the raster's CRS)")
        pixels.append((col, row))
    if box is not None:
        corners = [map_to_pixel(geotransform, x, y) for x, y in ((box[0], box[1]), (box[2], box[3]))]
        cols, rows = [c for c, _ in corners], [r for _, r in corners]
        col0, row0 = max(min(cols), 0.0), max(min(rows), 0.0)
        col1, row1 = min(max(cols), float(grid.raster_width)), min(max(rows), float(grid.raster_height))
        if col0 >= col1 or row0 >= row1:
            raise QuickSamError("the box " + ",".join(f"{v:.10g}" for v in box) + " is outside the raster; draw "
                                "it over the raster (in the raster's CRS)")
        pixels += [(col0, row0), (col1, row1)]
    return pixels


def _place_and_encode(request: TileRequest, level: FeatureStore, folder: str, pixels: List[Tuple[float, float]],
                      progress: Optional[ProgressCallback], cancelled: Optional[CancelCheck],
                      model: Optional[SegmentModel],
                      started: Optional[Callable[[FeatureStore, Tile, bool], None]]) -> TileOutcome:
    """Place the tile on `level` (whose lock the caller holds), append it when new, encode it when needed."""
    level = FeatureStore.open(level.root)
    check_store_finished(level)
    level.discard_partial_writes()
    tile, new = tile_for_prompts(level.grid, pixels)
    if not new and level.status(tile) in (STATUS_DONE, STATUS_NODATA):
        if started is not None:
            started(level, tile, False)
        LOGGER.info("tile %s of %s already holds the prompts; nothing to encode", tile.tile_id, level.root)
        return TileOutcome(level, folder, tile, False, EncodeStats())
    raster = check_raster(request, level)   # bad input is refused before the manifest changes
    weights = check_weights_source(level, request.checkpoint)
    model = model or load_store_model(level, raster, weights, request.device)
    check_weights(level, model, weights)
    if new:
        manifest = level.manifest
        level.update_manifest(dataclasses.replace(manifest, grid=with_tile(manifest.grid, tile),
                                                  format_version=max(manifest.format_version, FORMAT_VERSION)))
        LOGGER.info("added tile %s to %s", tile.tile_id, level.root)
    if started is not None:
        started(level, tile, True)
    stats = _encode(level, request.store, folder, tile, raster, model, progress, cancelled)
    return TileOutcome(FeatureStore.open(level.root), folder, tile, True, stats)


def check_store_finished(level: FeatureStore) -> None:
    """QuickSamError when the store was never finished (no feature layout or no decoder yet)."""
    if not level.manifest.features.arrays or not (level.root / DECODER_ONNX).is_file():
        raise QuickSamError(f"store '{level.root}' is not finished; run the same 'quicksam encode' command to finish "
                            "it, then add tiles to it")


def check_raster(request: TileRequest, level: FeatureStore) -> str:
    """The raster to read (the request's, else the manifest's source: a file, or a web source as
    encoder/online_sources.py records it), checked against the store's fingerprint. QuickSamError when a file is
    missing or is not the raster the store was encoded from."""
    recorded = level.manifest.raster
    path = request.raster or recorded.path
    if not request.raster and not is_network_source(path) and not path.startswith("/vsi") and not Path(path).exists():
        raise QuickSamError(f"the raster of store '{level.root}' is no longer at '{path}'; pass its new place with "
                            "--raster")
    info = describe_raster(path)
    if raster_fingerprint_rasterio(path, info) != recorded.fingerprint:
        raise QuickSamError(f"'{path}' is not the raster store '{level.root}' was encoded from (its contents or "
                            "georeference differ); pass the original with --raster, or encode the new raster into a "
                            "new store")
    return path


def check_weights_source(level: FeatureStore, checkpoint: Optional[str]) -> Optional[ResolvedCheckpoint]:
    """The store's checkpoint file (None for random weights): `checkpoint` if given, else the path the
    manifest records if it still exists, else its checkpoint name. CheckpointError/QuickSamError when it
    cannot be found or is not the store's (another SHA-256)."""
    from .checkpoints import resolve_checkpoint

    manifest = level.manifest
    if manifest.model.random_weights and checkpoint is None:
        return None
    recorded = manifest.checkpoint
    source = recorded.source if recorded.source and Path(recorded.source).is_file() else None
    name = checkpoint or source or recorded.name
    if not name:
        raise QuickSamError(f"store '{level.root}' does not name its checkpoint; pass it with --checkpoint")
    resolved = resolve_checkpoint(name, model=manifest.model.name)
    if recorded.sha256 and resolved.sha256 != recorded.sha256:
        raise QuickSamError(f"checkpoint '{name}' is not the one store '{level.root}' was encoded with (SHA-256 "
                            f"{resolved.sha256[:12]}…, the store's {recorded.sha256[:12]}…); pass that one with "
                            "--checkpoint")
    return resolved


def load_store_model(level: FeatureStore, raster: str, weights: Optional[ResolvedCheckpoint],
                     device: str) -> SegmentModel:
    """The store's model (name, input size, seed of random weights) with `weights`, on `device`."""
    manifest = level.manifest
    request = EncodeRequest(raster=raster, store=level.root, model=manifest.model.name, checkpoint=weights,
                            seed=manifest.model.seed or 0, device=device, tile_size=manifest.model.image_size)
    return load_model_for(request)


def check_weights(level: FeatureStore, model: SegmentModel, weights: Optional[ResolvedCheckpoint]) -> None:
    """QuickSamError when seeded random weights built here are not the store's (another torch may seed
    differently): tiles of other weights would not fit the others."""
    expected = level.manifest.checkpoint.sha256
    if weights is None and expected and random_weights_identity(model) != expected:
        raise QuickSamError(f"the random weights built here (seed {level.manifest.model.seed}) differ from those of "
                            f"store '{level.root}' (another torch or model version?); encode the raster again "
                            "into a new store")


def _encode(level: FeatureStore, root: Path, folder: str, tile: Tile, raster: str, model: SegmentModel,
            progress: Optional[ProgressCallback], cancelled: Optional[CancelCheck]) -> EncodeStats:
    """Encode `tile` of `level` through the TilePipeline, then rewrite the tile indexes (also when the run
    stops, where possible)."""
    stretch = Stretch(**dataclasses.asdict(level.manifest.preprocessing.stretch))
    tile_id = tile.tile_id if folder == "." else f"{folder}/{tile.tile_id}"
    report = progress or (lambda event: None)

    def on_progress(event: ProgressEvent) -> None:
        report(ProgressEvent(1, 1, tile_id, event.status))

    pipeline = TilePipeline(level, model, raster, stretch, 1, on_progress, cancelled or never_cancelled)
    try:
        stats = pipeline.run([tile])
    except BaseException:
        _write_indexes_if_possible(level, root)
        raise
    write_indexes(level, root)
    return stats


def _write_indexes_if_possible(level: FeatureStore, root: Path) -> None:
    """The tile indexes of a run that stopped, written if they can be (the tile shows as pending), else left to
    the next run, so that their own failure never hides why the run stopped."""
    try:
        write_indexes(level, root)
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one to report
        LOGGER.debug("tile indexes of %s not written (the next run writes them): %s", root, exc)


def write_indexes(level: FeatureStore, root: Path) -> None:
    """Rewrite the tile index of `level` and, in a multi-scale store (root folder `root`), the root's index of
    every level."""
    levels = level_stores(FeatureStore.open(root))
    if len(levels) == 1 or level.root != levels[0].root:
        write_tile_index(level)
    if len(levels) > 1:
        write_tile_index(levels[0], levels)


__all__ = ["TileOutcome", "TileRequest", "choose_level", "encode_tile_at", "level_pixels"]
