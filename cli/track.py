"""`quicksam track`: track objects through a series store by running quicksam:trackobjects in a headless QGIS
(the tracking itself runs in the encoder's Python, as `quicksam track-masks`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Tuple

from ..core.errors import Cancelled, QuickSamError
from .events import EventWriter, add_events_option, stop_signal_handler
from .headless import in_headless_qgis, open_store_before_qgis, private_project, run_algorithm
from .options import parse_box, parse_point
from .segment import check_output_folder_writable, check_segment_output, collecting_feedback, prompts_crs

if TYPE_CHECKING:
    from qgis.core import QgsCoordinateReferenceSystem, QgsVectorLayer

TRACK_LAYER = "tracks"
DIRECTIONS = ("forward", "backward", "both")


def add_track_parser(commands: argparse._SubParsersAction) -> None:
    """`quicksam track STORE --frame N (--point/--box/--prompts) [--direction] [--frames A:B] --output OUT`."""
    track = commands.add_parser(
        "track", help="track objects through the frames of a series store (SAM 2 video memory)",
        description="Track objects prompted on one frame of a series store through its other frames and write one "
                    "polygon per object per frame (raster CRS) with its date-time, a layer QGIS's Temporal "
                    "Controller animates. --point/--box describe ONE object; a --prompts file holds any number "
                    "(points, and polygons as mask prompts). Runs the Processing algorithm quicksam:trackobjects "
                    "in a headless QGIS; the tracking runs in the encoder's Python (docs/time-series.md).")
    track.add_argument("store", type=Path, help="series store folder written by 'quicksam encode'")
    track.add_argument("--frame", type=int, required=True, metavar="N",
                       help="the series frame (index, 0 = earliest date) the prompts are on")
    track.add_argument("--point", type=parse_point, action="append", metavar="X,Y[,LABEL]",
                       help="a point prompt; LABEL 1 = foreground (default), 0 = background. Repeat for more points")
    track.add_argument("--box", type=parse_box, metavar="XMIN,YMIN,XMAX,YMAX", help="a box prompt around the object")
    track.add_argument("--object-id", type=int, metavar="ID",
                       help="the id of the --point/--box object, a whole number 1 or more (default 1); a --prompts "
                            "file gives its ids with --id-field")
    track.add_argument("--prompts", type=Path, metavar="FILE", help="a vector file of prompt points and polygons")
    track.add_argument("--prompts-crs", metavar="CRS", help="CRS of the prompt coordinates (default: the raster's "
                                                            "for --point/--box, the file's own for --prompts)")
    track.add_argument("--id-field", help="with --prompts: features with the same whole number are one object with "
                                          "that id (default: each feature is one, numbered 1, 2, ...)")
    track.add_argument("--frame-field", help="with --prompts: each prompt's frame (all must be --frame)")
    track.add_argument("--label-field", help="with --prompts: 1 = foreground, 0 = background point")
    track.add_argument("--polygons", choices=("mask", "box"), default="mask",
                       help="with --prompts: a polygon is a mask prompt (its shape, default) or a box (its extent)")
    track.add_argument("--direction", choices=DIRECTIONS, default="both",
                       help="forward (later frames), backward (earlier) or both (default)")
    track.add_argument("--frames", metavar="A:B", help="track series frames A to B only (inclusive)")
    track.add_argument("--output", type=Path, required=True, metavar="OUT.gpkg",
                       help="vector file for the polygons, its format by its extension (.gpkg keeps the temporal "
                            "settings in its default style; other formats get a .qml beside them)")
    track.add_argument("--layer", default=TRACK_LAYER, help="layer name in a GeoPackage (default %(default)s)")
    track.add_argument("--overwrite", action="store_true", help="replace --output (in a GeoPackage: its --layer)")
    add_events_option(track)
    track.set_defaults(handler=_cmd_track)


def _check_prompts(args: argparse.Namespace) -> None:
    if args.prompts and (args.point or args.box):
        raise QuickSamError("give the prompts either with --point/--box or in a --prompts file, not both")
    if not (args.prompts or args.point or args.box):
        raise QuickSamError("give the object's prompts: one or more --point X,Y[,LABEL], a --box, or a --prompts file")
    if args.object_id is not None and args.prompts:
        raise QuickSamError("--object-id applies to --point/--box only; a --prompts file's objects take their ids "
                            "from --id-field (or are numbered 1, 2, ...)")
    if args.object_id is not None and args.object_id < 1:
        raise QuickSamError(f"--object-id {args.object_id} is not an object id; give a whole number 1 or more")
    if (args.id_field or args.frame_field or args.label_field) and not args.prompts:
        raise QuickSamError("--id-field, --frame-field and --label-field apply to a --prompts file only")
    if args.prompts and not args.prompts.is_file():
        raise QuickSamError(f"the prompts file '{args.prompts}' does not exist")


def _check_frame(store: Path, frame: int) -> None:
    """QuickSamError (one line, naming the series' frames) for a negative --frame; Processing's own refusal
    ("incorrect parameter value for FRAME") names no option."""
    if frame >= 0:
        return
    from ..core.store import FeatureStore
    from ..core.store_series import series_frames

    frames = series_frames(FeatureStore.open(store)) if store.exists() else []
    known = f" (frames 0 to {len(frames) - 1})" if frames else ""
    raise QuickSamError(f"--frame {frame} is not a frame of the series{known}: a frame index is 0 or more, 0 the "
                        "earliest date")


def _command_line_layer(args: argparse.Namespace, crs: QgsCoordinateReferenceSystem) -> Tuple[QgsVectorLayer, str]:
    """The --point/--box prompts as one object in an in-memory GeoJSON (fields obj_id, label); (layer, path)."""
    from osgeo import gdal
    from qgis.core import QgsVectorLayer

    obj_id = 1 if args.object_id is None else args.object_id
    features = [{"type": "Feature", "properties": {"obj_id": obj_id, "label": label},
                 "geometry": {"type": "Point", "coordinates": [x, y]}} for x, y, label in args.point or []]
    if args.box:
        xmin, ymin, xmax, ymax = args.box
        ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
        features.append({"type": "Feature", "properties": {"obj_id": obj_id, "label": 1},
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path = f"/vsimem/quicksam-track-prompts-{os.getpid()}-{id(args)}.geojson"
    gdal.FileFromMemBuffer(path, json.dumps({"type": "FeatureCollection", "features": features}).encode())
    layer = QgsVectorLayer(path, "prompts", "ogr")
    layer.setCrs(crs)
    return layer, path


def _parameters(args: argparse.Namespace, layer_id: str, partial: Path) -> Dict[str, object]:
    from qgis.core import QgsProcessingOutputLayerDefinition

    from ..ui.algorithms.track_algorithm import TrackObjectsAlgorithm as Algorithm

    destination = QgsProcessingOutputLayerDefinition(str(partial))
    destination.createOptions = {"layerName": TRACK_LAYER}
    from_file = bool(args.prompts)
    return {Algorithm.STORE: str(args.store), Algorithm.PROMPTS: layer_id,
            Algorithm.OBJECT_ID: (args.id_field or "") if from_file else "obj_id",
            Algorithm.FRAME_FIELD: (args.frame_field or "") if from_file else "", Algorithm.FRAME: args.frame,
            Algorithm.LABEL_FIELD: (args.label_field or "") if from_file else "label",
            Algorithm.POLYGONS: ("mask", "box").index(args.polygons if from_file else "box"),
            Algorithm.DIRECTION: DIRECTIONS.index(args.direction), Algorithm.FRAMES: args.frames or "",
            Algorithm.OUTPUT: destination}


@contextlib.contextmanager
def _interruptible() -> Iterator[Dict[str, object]]:
    """SIGINT (Ctrl-C) and SIGTERM stop the run: while `state["feedback"]` is set (the algorithm runs) they cancel
    it, which stops the tracker's process; while `state["writing"]` (the output being written) they wait for it;
    otherwise, and on a second signal, they raise KeyboardInterrupt.
    `state["requested"]` turns True. The previous handlers come back afterwards."""
    state: Dict[str, object] = {"requested": False, "feedback": None}

    def handler(signum: int, frame: object) -> None:
        feedback = state["feedback"]
        if state.get("writing"):   # the tracking is done: the output is finished, then the run ends
            state["requested"] = True
            return
        if state["requested"] or feedback is None:
            state["requested"] = True
            raise KeyboardInterrupt
        state["requested"] = True
        feedback.cancel()  # type: ignore[attr-defined]

    with stop_signal_handler(handler):
        yield state


def _interrupted(output: Path) -> Cancelled:
    return Cancelled(f"interrupted: tracking stopped before the end and nothing was written to '{output}'; run the "
                     "same command again")


def _run_track_algorithm(args: argparse.Namespace, partial: Path, events: EventWriter,
                         state: Dict[str, object]) -> Dict[str, object]:
    """Run quicksam:trackobjects into `partial` (its layer TRACK_LAYER); its results."""
    from osgeo import gdal
    from qgis.core import QgsVectorLayer

    from ..ui.algorithms.track_prompts import check_prompt_fields

    crs = prompts_crs(args)
    project = private_project()
    vsimem: Optional[str] = None
    if args.prompts:
        layer = QgsVectorLayer(str(args.prompts), "prompts", "ogr")
        if not layer.isValid():
            raise QuickSamError(f"'{args.prompts}' cannot be opened as a vector layer of points or polygons")
        if args.prompts_crs:
            layer.setCrs(crs)
        names = layer.fields().names()
        check_prompt_fields(args.prompts.name, names, [
            ("--id-field", args.id_field), ("--frame-field", args.frame_field), ("--label-field", args.label_field)],
            hidden=[names[i] for i in layer.dataProvider().pkAttributeIndexes()])
    else:
        layer, vsimem = _command_line_layer(args, crs)
    layer_id = layer.id()
    project.addMapLayer(layer, False)
    del layer
    feedback = collecting_feedback(events)
    state["feedback"] = feedback
    try:
        results = run_algorithm("quicksam:trackobjects", _parameters(args, layer_id, partial), project, feedback)
    except QuickSamError:
        if state["requested"]:
            raise _interrupted(args.output) from None
        raise
    finally:
        state["feedback"] = None
        if vsimem:
            gdal.Unlink(vsimem)
    if state["requested"]:   # the tracker was stopped: its results are incomplete
        raise _interrupted(args.output)
    return results


def _cmd_track(args: argparse.Namespace, events: EventWriter) -> int:
    """Check the output and prompts, track in a headless QGIS, write the output and its temporal settings."""
    from ..interactive.output_formats import remove_gpkg, write_layer

    _check_prompts(args)
    wanted = Path(args.output).expanduser().absolute()
    if wanted.parent.is_dir():
        check_output_folder_writable(wanted)
    destination = check_segment_output(args.output, args.overwrite, args.layer)
    open_store_before_qgis(args.store)
    _check_frame(args.store, args.frame)
    events.start(store=str(args.store), output=str(destination.path))
    partial = destination.path.with_name(f".{destination.path.name}.partial-{os.getpid()}.gpkg")

    def track_and_write(state: Dict[str, object]) -> Tuple[Dict[str, object], str]:
        from ..ui.track_layer import save_temporal_style

        results = _run_track_algorithm(args, partial, events, state)
        state["writing"] = True   # from here a signal waits: the output is written whole
        written = write_layer(partial, TRACK_LAYER, destination, args.overwrite)
        if not results.get("TEMPORAL"):
            events.warning("the frames have no date-times: the layer is not temporal (frames are known by index)")
            return results, ""
        try:
            style = str(save_temporal_style(destination.path, written.layer or args.layer))
        except OSError as exc:
            events.warning(f"{exc}; set the layer's temporal properties in QGIS (Layer Properties > Temporal)")
            style = ""
        return results, style

    try:
        with _interruptible() as state:
            results, style = in_headless_qgis(lambda: track_and_write(state))
    except KeyboardInterrupt:   # before the tracker ran, or a second signal: nothing is left half-written
        raise _interrupted(destination.path) from None
    finally:
        remove_gpkg(partial)
    events.finished({"output": str(destination.path), "features": results.get("TRACKED"),
                     "lost": results.get("ABSENT"), "temporal_style": style})
    return 0
