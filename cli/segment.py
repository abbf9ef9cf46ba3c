"""`quicksam segment`: segment objects from prompts by running quicksam:segmentprompts in a headless QGIS."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from ..core.defaults import MASK_MODES
from ..core.errors import QuickSamError
from .events import EventWriter, add_events_option
from .headless import in_headless_qgis, one_line, open_store_before_qgis, private_project, run_algorithm
from .options import LAYER_HELP, OUTPUT_HELP, SEGMENT_LAYER, parse_box, parse_point

if TYPE_CHECKING:
    from qgis.core import QgsCoordinateReferenceSystem, QgsProcessingFeedback, QgsVectorLayer

    from ..interactive.output_formats import Destination, WrittenLayer


def add_segment_parser(commands: argparse._SubParsersAction) -> None:
    """`quicksam segment STORE --point/--box/--prompts ... --output OUT`."""
    segment = commands.add_parser(
        "segment", help="segment objects on an encoded raster from points, a box or a file of prompts",
        description="Segment objects on a feature store from prompts and write their polygons (in the raster's "
                    "CRS). --point and --box prompts describe ONE object (like clicks in the dock); a --prompts "
                    "file holds any number: each point or polygon is one object, or features sharing "
                    "--group-field form one. Objects that cannot be segmented are reported and skipped; the "
                    "command fails, writing nothing, only if none could be. Runs the Processing algorithm "
                    "quicksam:segmentprompts in a headless QGIS.")
    segment.add_argument("store", type=Path, help="feature store folder written by 'quicksam encode'")
    segment.add_argument("--point", type=parse_point, action="append", metavar="X,Y[,LABEL]",
                         help="a point prompt; LABEL 1 = foreground (default), 0 = background. Repeat for more "
                              "points of the same object. Negative X: write --point=X,Y")
    segment.add_argument("--box", type=parse_box, action="append", metavar="XMIN,YMIN,XMAX,YMAX",
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
    segment.add_argument("--refine", action="store_true",
                         help="in a store with several levels: re-decode the edges of an object decoded on a coarser "
                              "level on the finest level's tiles (docs/levels.md)")
    segment.add_argument("--encode-missing", action="store_true",
                         help="when no tile of the store holds an object's prompts (across a tile border, or outside "
                              "the encoded area), encode one tile centred on them (in a separate encoder process, as "
                              "'quicksam encode-tile' does) and add it to the store, then segment")
    segment.add_argument("--finest", action="store_true",
                         help="decode at the finest level of a multi-scale store only (full resolution), never a "
                              "coarser one; with --encode-missing, missing tiles are added to the finest level")
    segment.add_argument("--output", type=Path, required=True, metavar="OUT.gpkg", help=OUTPUT_HELP)
    segment.add_argument("--layer", default=SEGMENT_LAYER, help=LAYER_HELP)
    segment.add_argument("--overwrite", action="store_true",
                         help="replace --output if it exists (in a GeoPackage: only its layer --layer)")
    add_events_option(segment)
    segment.set_defaults(handler=_cmd_segment)


def check_segment_output(output: Path, overwrite: bool, layer: str = SEGMENT_LAYER) -> Destination:
    """The --output destination (absolute path, format, layer), refused (QuickSamError) before any work if
    it cannot be written; see `output_formats.check_destination`."""
    from ..interactive.output_formats import check_destination

    return check_destination(output, layer, overwrite)


def _check_segment_prompts(args: argparse.Namespace) -> None:
    """QuickSamError when the prompt options do not describe objects (none, both kinds, two boxes...)."""
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


def _command_line_prompt_layer(args: argparse.Namespace,
                               crs: QgsCoordinateReferenceSystem) -> Tuple[QgsVectorLayer, str]:
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


def _open_prompt_layer(args: argparse.Namespace, crs: QgsCoordinateReferenceSystem
                       ) -> Tuple[QgsVectorLayer, str, str, Optional[str]]:
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


def _run_segment_algorithm(args: argparse.Namespace, partial: Path,
                           events: EventWriter) -> Tuple[Dict[str, object], List[str]]:
    """Run quicksam:segmentprompts into `partial`; (results, skipped-object messages). With --progress-json,
    Processing's progress becomes `progress` events in percent.

    The prompt layer belongs to a private project and goes with it before this returns: a QGIS layer
    still alive when QGIS exits crashes the interpreter's shutdown, and Processing keeps a reference to
    the parameters of a failed run, so the layer is passed by id, never as an object.
    """
    from osgeo import gdal

    from ..ui.algorithms.segment_algorithm import SegmentPromptsAlgorithm as Algorithm

    crs = prompts_crs(args)
    project = private_project()
    layer, group_field, label_field, vsimem = _open_prompt_layer(args, crs)
    layer_id = layer.id()
    project.addMapLayer(layer, False)  # the project owns it now
    del layer
    parameters = _segment_parameters(args, layer_id, group_field, label_field, partial)
    feedback = collecting_feedback(events)
    try:
        results = run_algorithm("quicksam:segmentprompts", parameters, project, feedback)
    except QuickSamError:
        reason = None if args.prompts else _command_line_object_problem(feedback.errors)
        if reason is None:
            raise
        raise QuickSamError(f"nothing was segmented: {reason}") from None
    finally:
        if vsimem:
            gdal.Unlink(vsimem)
    summary = {key: results.get(key) for key in (Algorithm.SEGMENTED, Algorithm.SKIPPED)}
    return summary, [message for message in feedback.errors if " skipped: " in message]


def prompts_crs(args: argparse.Namespace) -> QgsCoordinateReferenceSystem:
    """The QgsCoordinateReferenceSystem of the prompt coordinates: --prompts-crs, else the raster's (the
    store's). QuickSamError for a store that cannot be opened or a CRS QGIS does not know."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsProcessingException

    from ..ui.algorithms.segment_algorithm import open_store
    from ..ui.layers import raster_crs

    try:
        store = open_store(str(args.store))
    except QgsProcessingException as exc:
        raise QuickSamError(one_line(str(exc))) from None
    if not args.prompts_crs:
        return raster_crs(store)
    crs = QgsCoordinateReferenceSystem(args.prompts_crs)
    if not crs.isValid():
        raise QuickSamError(f"--prompts-crs '{args.prompts_crs}' is not a CRS QGIS knows; use an authority "
                            "code such as EPSG:4326 (or a WKT or PROJ string)")
    return crs


def _segment_parameters(args: argparse.Namespace, layer_id: str, group_field: str, label_field: str,
                        partial: Path) -> dict:
    """The parameters of quicksam:segmentprompts for `args`, writing layer SEGMENT_LAYER of `partial`."""
    from qgis.core import QgsProcessingOutputLayerDefinition

    from ..ui.algorithms.segment_algorithm import SegmentPromptsAlgorithm as Algorithm

    destination = QgsProcessingOutputLayerDefinition(str(partial))
    destination.createOptions = {"layerName": SEGMENT_LAYER}
    return {
        Algorithm.STORE: str(args.store), Algorithm.PROMPTS: layer_id, Algorithm.GROUP_FIELD: group_field,
        Algorithm.LABEL_FIELD: label_field, Algorithm.MASK_MODE: MASK_MODES.index(args.mask_mode),
        Algorithm.SIMPLIFY: args.simplify, Algorithm.MIN_AREA: args.min_area,
        Algorithm.KEEP_HOLES: not args.fill_holes, Algorithm.REFINE: args.refine, Algorithm.OUTPUT: destination,
        Algorithm.ENCODE_MISSING: args.encode_missing, Algorithm.FINEST_ONLY: args.finest,
    }


def collecting_feedback(events: EventWriter) -> QgsProcessingFeedback:
    """A Processing feedback that keeps the errors the algorithm reports (in `errors`) and, with
    --progress-json, forwards its progress as `progress` events."""
    from qgis.core import QgsProcessingFeedback

    class CollectingFeedback(QgsProcessingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.errors: List[str] = []

        def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N803 - Qt's name
            self.errors.append(error)

    feedback = CollectingFeedback()
    if events.as_json:
        feedback.progressChanged.connect(lambda percent: _forward_percent(events, feedback, percent))
    return feedback


def _command_line_object_problem(errors: Sequence[str]) -> Optional[str]:
    """Why the one object of --point/--box could not be segmented, from the algorithm's reports; None if
    none says. The object is ours, not the user's (they gave no layer), so only its reason is told."""
    from ..interactive.prompt_input import SkippedObject

    for message in errors:
        skipped = SkippedObject.from_message(message)
        if skipped is not None:
            return skipped.reason
    return None


def _forward_percent(events: EventWriter, feedback: QgsProcessingFeedback, percent: float) -> None:
    """A Processing progress (percent) as a `progress` event; a closed output cancels the algorithm."""
    events.progress(round(percent, 2), 100, "percent")
    if events.closed:
        feedback.cancel()


def check_output_folder_writable(output: Path, option: str = "--output") -> None:
    """QuickSamError before any work when no file can be created beside `output` (a read-only store, a
    folder of someone else's)."""
    from ..core.diskspace import folder_unwritable_reason

    reason = folder_unwritable_reason(output.parent)
    if reason is not None:
        raise QuickSamError(f"cannot write '{output}' ({reason}); choose another {option}")


def _cmd_segment(args: argparse.Namespace, events: EventWriter) -> int:
    """Check the output and the prompts, segment in a headless QGIS, write the output (only when done)."""
    from ..interactive.output_formats import remove_gpkg, write_layer

    _check_segment_prompts(args)
    wanted = Path(args.output).expanduser().absolute()
    if wanted.parent.is_dir():  # a missing folder is told by the output check
        check_output_folder_writable(wanted)
    destination = check_segment_output(args.output, args.overwrite, args.layer)
    output = destination.path
    open_store_before_qgis(args.store)
    events.start(store=str(args.store), output=str(output))
    # The run writes a GeoPackage beside the output (same file system); only a finished run is written to
    # the output, in its format, without touching the output's other layers.
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}.gpkg")

    # in QGIS's lifetime: exitQgis unloads GDAL's drivers
    def segment_and_write() -> Tuple[Dict[str, object], List[str], WrittenLayer]:
        summary, skipped = _run_segment_algorithm(args, partial, events)
        return summary, skipped, write_layer(partial, SEGMENT_LAYER, destination, args.overwrite)

    try:
        summary, skipped, written = in_headless_qgis(segment_and_write)
    finally:
        remove_gpkg(partial)
    for message in skipped:
        events.warning(message)
    if written.kept_layers:
        events.info(written.message())
    events.finished({"output": str(output), "layer": written.layer, "objects_segmented": summary["SEGMENTED"],
                     "objects_skipped": summary["SKIPPED"]})
    return 0
