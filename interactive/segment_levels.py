"""Segment everything on the levels of a multi-scale store (core/levels.py, docs/segment-everything.md): which
levels a run takes, each level's settings and tiles, and each level's own names in the one run file (no QGIS).

Each level is a complete store (its geotransform maps its own pixels to the raster's CRS), so a level is
segmented exactly as a single store is: per tile, objects across tile borders merged within the level. Its
tiles get the level's folder as prefix (`levels/x4/r0000c0001`, as in the prompt outputs' `tile_id`) in the
run file and in the objects' `tile_ids`; the finest level of the store (its root folder) keeps bare tile
ids, so a single-level store is run exactly as before. level_merge.py then merges objects across levels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Dict, Iterable, List, Optional, Sequence, Set

from ..core.errors import QuickSamError
from ..core.levels import format_factor, parse_factors, same_factor
from ..core.store import FeatureStore
from ..core.store_levels import level_folder_of, level_stores
from ..core.tiling import Tile
from .level_merge import LevelObject, merge_levels
from .mask_generator import AutoMaskSettings
from .run_file import RunFile
from .tile_merge import TileMask
from .tile_selection import tiles_to_process

if TYPE_CHECKING:
    from osgeo import ogr

#: The "tile" whose done mark says the cross-level merge is committed: no level's tile id starts with "/", so it
#: is never taken for a tile.
LEVELS_MERGED = "/levels-merged"


@dataclass(frozen=True)
class SegmentLevel:
    """One level of a run: its store, `relative` its pixel over the store's finest level's (1 = finest; what
    --levels names), `prefix` of its tile ids in the run file ("" for the store's root level, else its folder:
    "levels/x4/"), `settings` for its tiles, and the `tiles` to segment."""

    store: FeatureStore
    relative: float
    prefix: str
    settings: AutoMaskSettings
    tiles: Sequence[Tile]

    @property
    def factor(self) -> float:
        """The level's pixel over the raster's own (the `level_factor` its objects carry)."""
        return self.store.manifest.pixel_grid.factor

    @property
    def resolution(self) -> float:
        """Map units of the raster's CRS per level pixel (the `resolution` its objects carry)."""
        return self.store.manifest.pixel_grid.resolution

    def tile_ids(self) -> List[str]:
        """The run file's ids of the level's tiles."""
        return [self.prefix + tile.tile_id for tile in self.tiles]


def parse_levels(text: str) -> Optional[List[float]]:
    """Level factors from "1,4" (factors of the store's finest level's pixel, read as `quicksam encode --levels`
    reads them: core/levels.parse_factors); None for "" (every level). QuickSamError (one line) otherwise."""
    if not text.strip():
        return None
    try:
        return list(parse_factors(text))
    except ValueError as exc:
        raise QuickSamError(f"{exc}, or nothing for every level") from None


def select_levels(root: FeatureStore, factors: Optional[Sequence[float]] = None) -> List[FeatureStore]:
    """The levels of `root` to segment, finest first: all of them (`factors` None), or those whose pixel is
    each of `factors` times the finest level's. QuickSamError naming the store's levels for a factor it has
    not; StoreError as `level_stores` for a damaged level."""
    return _chosen(root, level_stores(root), factors)


def _chosen(root: FeatureStore, levels: List[FeatureStore], factors: Optional[Sequence[float]]) -> List[FeatureStore]:
    """`select_levels` among `levels` (every level of `root`, finest first)."""
    if factors is None:
        return levels
    finest = levels[0].manifest.pixel_grid.factor
    chosen: List[FeatureStore] = []
    for factor in factors:
        match = [level for level in levels if same_factor(level.manifest.pixel_grid.factor / finest, float(factor))]
        if not match:
            have = ", ".join(format_factor(level.manifest.pixel_grid.factor / finest) for level in levels)
            raise QuickSamError(f"store '{root.root}' has no level {format_factor(factor)} (its levels: {have}); "
                                "choose among those, or add the level with quicksam encode --levels")
        if match[0] not in chosen:
            chosen.append(match[0])
    return sorted(chosen, key=lambda store: store.manifest.pixel_grid.factor)


def level_settings(settings: AutoMaskSettings, relative: float, coarsest: float) -> AutoMaskSettings:
    """`settings` for a level whose pixel is `relative` times the store's finest (`coarsest`: the coarsest
    level of the run's). Points per side follow SAM's rule per crop layer
    (segment_anything/utils/amg.py `build_all_layer_point_grids`: int(points_per_side / downscale**i), i the
    crop layer), with i = log2(coarsest / relative): a level 2**i times finer than the run's coarsest is SAM's
    crop layer i (its crops halve per layer); at least 1 point. `min_mask_region_area` (finest level's
    pixels) becomes this level's pixels (rounded)."""
    layer = math.log2(coarsest / relative)
    points = max(1, int(settings.points_per_side / settings.crop_n_points_downscale_factor ** layer + 1e-9))
    region = int(round(settings.min_mask_region_area / relative ** 2))
    return dataclasses.replace(settings, points_per_side=points, min_mask_region_area=region)


def plan_levels(root: FeatureStore, factors: Optional[Sequence[float]], settings: AutoMaskSettings,
                area_wkbs: Optional[Sequence[bytes]] = None) -> List[SegmentLevel]:
    """The levels of a run, finest first, each with its settings and tiles (`tile_selection.tiles_to_process`
    on that level: QuickSamError as there, about that level's folder)."""
    every = level_stores(root)
    stores = _chosen(root, every, factors)
    finest = every[0].manifest.pixel_grid.factor
    relatives = [store.manifest.pixel_grid.factor / finest for store in stores]
    levels = []
    for store, relative in zip(stores, relatives):
        folder = level_folder_of(root, store)
        prefix = "" if folder == "." else folder + "/"  # levels/x4/r0000c0001, as the prompt outputs name it
        levels.append(SegmentLevel(store, relative, prefix, level_settings(settings, relative, max(relatives)),
                                   tiles_to_process(store, area_wkbs)))
    return levels


def merge_levels_in_run(run: RunFile, levels: Sequence[SegmentLevel], crop_nms_thresh: float) -> int:
    """Merge the run file's objects across `levels` (level_merge.py's rule), once: the dropped objects are
    deleted and the others numbered again, in one transaction with its done mark (a resumed run that finds
    the mark does nothing). The number of objects dropped (0 for one level)."""
    if len(levels) < 2 or LEVELS_MERGED in run.finished_tiles():
        return 0
    records = run.object_records()
    objects = [LevelObject(fid, factor, score, box) for fid, factor, score, box in records]
    geometries: Dict[int, ogr.Geometry] = {}

    def geometry(fid: int) -> ogr.Geometry:
        if fid not in geometries:
            geometries[fid] = run.object_geometry(fid)
        return geometries[fid]

    finest = levels[0]
    cell = finest.store.grid.tile_size * finest.resolution  # about one finest tile: few cells per object
    result = merge_levels(objects, geometry, crop_nms_thresh, cell)
    with run.transaction():
        run.delete_objects(result.dropped)
        run.mark_done(LEVELS_MERGED)
    return len(result.dropped)


class LevelRunFile:
    """The run file as one level sees it: its tile ids without the level's prefix, so the level's tiles,
    border merge (`border_merge.Staging`) and done marks work as on a store of its own. Everything else is
    the `RunFile`'s."""

    def __init__(self, run: RunFile, prefix: str) -> None:
        self.run = run
        self.prefix = prefix

    def __getattr__(self, name: str):  # noqa: ANN204 - the RunFile's own attribute
        return getattr(self.run, name)

    def _mine(self, tile_id: str) -> bool:
        return tile_id.startswith(self.prefix) and "/" not in tile_id[len(self.prefix):]

    def _bare(self, ids: Iterable[str]) -> Set[str]:
        return {tile_id[len(self.prefix):] for tile_id in ids if self._mine(tile_id)}

    def _named(self, ids: Collection[str]) -> List[str]:
        return [self.prefix + tile_id for tile_id in ids]

    def finished_tiles(self) -> set:
        return self._bare(self.run.finished_tiles())

    def mark_done(self, tile_id: str) -> None:
        self.run.mark_done(self.prefix + tile_id)

    def stage(self, kind: str, masks: Iterable[TileMask]) -> None:
        self.run.stage(kind, (dataclasses.replace(mask, tile_id=self.prefix + mask.tile_id) for mask in masks))

    def staged(self, kind: str, tile_ids: Collection[str]) -> Dict[int, TileMask]:
        found = self.run.staged(kind, self._named(tile_ids))
        return {key: dataclasses.replace(mask, tile_id=mask.tile_id[len(self.prefix):]) for key, mask in found.items()}

    def tiles_with(self, kind: str) -> Set[str]:
        return self._bare(self.run.tiles_with(kind))

    def unstage_tiles(self, kind: str, tile_ids: Collection[str]) -> None:
        self.run.unstage_tiles(kind, self._named(tile_ids))


__all__ = ["LEVELS_MERGED", "LevelRunFile", "SegmentLevel", "level_settings", "merge_levels_in_run", "parse_levels",
           "plan_levels", "select_levels"]
