"""`quicksam segment-all`: segment everything by running quicksam:segmentall in a headless QGIS."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

from ..core.defaults import MASK_MODES
from ..core.errors import QuickSamError
from .batch import add_batch_options, is_batch
from .events import EventWriter, add_events_option
from .headless import in_headless_qgis, open_store_before_qgis, private_project, run_algorithm
from .options import (
    LAYER_HELP,
    OUTPUT_HELP,
    SEGMENT_LAYER,
    add_cluster_options,
    cluster_settings,
    parse_box,
    parse_factors,
)
from .segment import check_segment_output

if TYPE_CHECKING:
    from ..interactive.segment_progress import SegmentAllProgress
    from ..ui.algorithms.segment_all_algorithm import TileProgressFeedback


def add_segment_all_parser(commands: argparse._SubParsersAction) -> None:
    """`quicksam segment-all STORE --output OUT [options]`. Its options are added when the command is parsed
    (`OneLineParser`): their defaults are the decoding stage's, which `quicksam encode` never loads."""
    command = commands.add_parser(
        "segment-all", help="segment everything on an encoded raster (automatic masks, merged across tiles)",
        description="Find every object on a feature store with SAM's automatic mask generator, tile by tile from "
                    "the cached features, objects across tile borders merged into one polygon "
                    "(docs/segment-everything.md). On a multi-scale store every level is segmented (or those of "
                    "--levels) and objects are merged across levels. A stopped run resumes when the same command is "
                    "run again. "
                    "Runs the Processing algorithm quicksam:segmentall in a headless QGIS.",
        add_arguments=_add_arguments)
    command.set_defaults(handler=_cmd_segment_all)


def _add_arguments(command: argparse.ArgumentParser) -> None:
    from ..interactive.automatic import AutoMaskSettings

    defaults = AutoMaskSettings()
    command.add_argument("store", type=Path, nargs="+", metavar="STORE",
                         help="feature store folder written by 'quicksam encode'; with --output-dir or "
                              "--next-to-inputs: inputs (stores, rasters with their stores, folders, patterns)")
    command.add_argument("--output", type=Path, metavar="OUT.gpkg",
                         help=OUTPUT_HELP + "; a stopped run is kept in OUT.partial.gpkg beside it (required for one "
                                            "STORE)")
    command.add_argument("--layer", default=SEGMENT_LAYER, help=LAYER_HELP)
    command.add_argument("--aoi", type=Path, metavar="FILE", help="polygon file: only tiles meeting it (any CRS)")
    command.add_argument("--extent", type=parse_box, metavar="XMIN,YMIN,XMAX,YMAX",
                         help="only tiles meeting this extent (the raster's CRS)")
    command.add_argument("--levels", type=parse_factors, metavar="1,4,16",
                         help="levels of a multi-scale store to segment, as factors of its finest level's pixel size "
                              "(as quicksam encode --levels; default: every level)")
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
            ("simplify", float, "simplification tolerance in map units (0 = pixel edges)"),
            ("crop-nms-thresh", float, "box IoU above which, of two objects of different levels, the coarser "
                                       "level's is dropped (SAM's crop NMS)"),
            ("crop-n-points-downscale-factor", int, "points per side divided by this for each halving of the "
                                                    "pixel size below the coarsest level (SAM's rule per crop "
                                                    "layer)")):
        key = name.replace("-", "_")
        default = getattr(defaults, "simplify_tolerance" if key == "simplify" else key)
        command.add_argument(f"--{name}", type=kind, default=default, help=f"{text} (default {default})")
    command.add_argument("--mask-mode", default=defaults.mask_mode, choices=MASK_MODES,
                         help="all (default: SAM's three candidates per point), single, best, largest, smallest")
    command.add_argument("--skip-covered-points", action="store_true",
                         help="opt-in, faster: do not decode grid points inside a mask already kept on the tile "
                              "(not SAM's result: objects nested inside kept ones may be missed)")
    command.add_argument("--overwrite", action="store_true",
                         help="replace --output (in a GeoPackage: only its layer --layer) if it exists and restart "
                              "an unfinished run with other settings")
    add_batch_options(command, "objects file (<store>_objects.gpkg)", stores_dir=True)
    add_cluster_options(command, "tiles are decoded")
    add_events_option(command)


def _run_segment_all_algorithm(args: argparse.Namespace, events: EventWriter) -> Dict[str, object]:
    """Run quicksam:segmentall on args; its results. Cancellation (Ctrl+C) keeps finished tiles."""
    from ..ui.algorithms.cluster_parameters import SCHEDULER, WORKERS
    from ..ui.algorithms.segment_all_algorithm import SegmentAllAlgorithm as Algorithm

    project = private_project()
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
        Algorithm.LEVELS: ",".join(f"{factor:g}" for factor in args.levels) if args.levels else "",
        Algorithm.CROP_NMS_THRESH: args.crop_nms_thresh,
        Algorithm.CROP_N_POINTS_DOWNSCALE_FACTOR: args.crop_n_points_downscale_factor,
        Algorithm.SKIP_COVERED_POINTS: args.skip_covered_points,
        Algorithm.OVERWRITE: args.overwrite, Algorithm.LAYER_NAME: args.layer, Algorithm.OUTPUT: str(args.output),
        SCHEDULER: args.scheduler or "", WORKERS: args.workers,
    }
    results = run_algorithm("quicksam:segmentall", parameters, project, _tile_feedback(events))
    output = Path(results[Algorithm.OUTPUT])
    layer = _layer_written(output, args.layer)
    summary = {"output": str(output), "layer": layer, "objects": results[Algorithm.OBJECTS],
               "tiles": results[Algorithm.TILES], "message": _other_layers_message(output, layer)}
    levels = [float(factor) for factor in str(results.get(Algorithm.LEVELS_SEGMENTED) or "1").split(",")]
    if len(levels) > 1:  # a multi-scale run: its levels, and the objects found at more than one of them
        summary.update(levels=levels, level_duplicates=results[Algorithm.LEVEL_DUPLICATES])
    if results.get(Algorithm.NO_OBJECTS_REASON):  # which filters dropped the masks, and the option to change
        summary["no_objects_reason"] = results[Algorithm.NO_OBJECTS_REASON]
    return summary


def _layer_written(output: Path, layer: str) -> Optional[str]:
    """`layer` if `output` is a multi-layer file (a GeoPackage), else None: the file is the layer."""
    from ..interactive.output_formats import format_for

    return layer if format_for(output).multi_layer else None


def _other_layers_message(output: Path, layer: Optional[str]) -> Optional[str]:
    """'wrote layer L into OUT; its other layers (...) are kept' when OUT holds other layers, else None."""
    from ..interactive.output_formats import WrittenLayer, layer_names

    others = tuple(name for name in (layer_names(output) or []) if name != layer) if layer else ()
    return WrittenLayer(output, layer, others).message() if others else None


def _tile_feedback(events: EventWriter) -> TileProgressFeedback:
    """A Processing feedback that turns each finished tile of quicksam:segmentall into a `progress` event
    (unit "tiles"); a closed output cancels the run (its finished tiles are kept)."""
    from ..ui.algorithms.segment_all_algorithm import TileProgressFeedback
    from ..ui.algorithms.segment_all_report import skipped_points_message

    class EventFeedback(TileProgressFeedback):
        def tile_finished(self, event: SegmentAllProgress) -> None:
            if event.points_skipped is not None:
                events.info(skipped_points_message(event))
            events.progress(event.done, event.total, "tiles", tile=event.tile_id, objects=event.objects)
            if events.closed:
                self.cancel()

    return EventFeedback()


def one_store(args: argparse.Namespace) -> Path:
    """The one STORE of a single run; QuickSamError (one line) for several, or no --output."""
    if len(args.store) > 1:
        raise QuickSamError(f"{len(args.store)} inputs given: add --output-dir DIR or --next-to-inputs to segment "
                            "each (docs/batch.md), or give one STORE and --output")
    if args.output is None:
        raise QuickSamError("give --output OUT.gpkg (or --output-dir DIR / --next-to-inputs for many inputs)")
    return args.store[0]


def _cmd_segment_all(args: argparse.Namespace, events: EventWriter) -> int:
    """Check the output and the store, then segment everything in a headless QGIS."""
    if is_batch(args):
        from .segment_all_batch import run_segment_all_batch

        return run_segment_all_batch(args, events)
    args.store = one_store(args)
    args.output = check_segment_output(args.output, args.overwrite, args.layer).path
    if not args.store.exists():
        raise QuickSamError(f"the feature store '{args.store}' does not exist; encode the raster first "
                            "(quicksam encode RASTER STORE)")
    open_store_before_qgis(args.store)
    if args.devices:
        raise QuickSamError("--devices is for quicksam encode: segment-all decodes on the CPU; give --workers N")
    cluster_settings(args)  # checked before QGIS starts
    if args.levels:  # a level the store has not is refused in a moment, not after QGIS has started
        from ..core.store import FeatureStore
        from ..interactive.segment_levels import select_levels

        select_levels(FeatureStore.open(args.store), args.levels)
    events.start(store=str(args.store), output=str(args.output))
    summary = in_headless_qgis(lambda: _run_segment_all_algorithm(args, events))
    message = summary.pop("message")
    if message:
        events.info(message)
    if summary.get("no_objects_reason"):
        events.warning(summary["no_objects_reason"])
    events.finished(summary)
    return 0
