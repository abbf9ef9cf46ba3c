"""`quicksam segment-all INPUT... --output-dir DIR | --next-to-inputs`: segment everything on many stores in one
headless QGIS (docs/batch.md).

Inputs are stores, or rasters whose stores are found by the naming rule of `quicksam encode` (core/batch.py:
in --stores-dir, else the output folder or next to each raster). QGIS starts once; quicksam:segmentall runs
once per item, as for one store (cli/segment_all.py). One item's failure is its own; the others go on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..core.batch import SEGMENT_ALL, BatchItem, is_store_folder
from ..core.batch_log import (
    ALREADY_FINISHED,
    DONE,
    OTHER_SETTINGS,
    ItemResult,
    item_log,
    last_output_run,
    one_line_error,
    unwritable_log,
)
from ..core.errors import Cancelled, QuickSamError
from ..core.logger import LOGGER
from ..core.store import MANIFEST
from .batch import (
    ItemEvents,
    announce,
    command_settings,
    dry_run_finished,
    finish,
    item_finished,
    item_started,
    new_result,
    plan_batch,
)
from .events import EventWriter, OutputClosed, stop_signal_handler


def gdal_raster_extensions() -> List[str]:
    """The raster extensions of this process's GDAL (`osgeo`: QGIS's own), for the default filter."""
    from osgeo import gdal

    from ..encoder.raster_formats import raster_extensions

    found: List[str] = []
    for index in range(gdal.GetDriverCount()):
        driver = gdal.GetDriver(index)
        if driver.GetMetadataItem(gdal.DCAP_RASTER) == "YES":
            found.extend((driver.GetMetadataItem(gdal.DMD_EXTENSIONS) or "").split())
    return raster_extensions(found)


def _missing_store(item: BatchItem, args: argparse.Namespace) -> str:
    """The one line for a raster input whose store is not there, nor any store of its folder made from it: the
    encode command that makes it."""
    where = f"--output-dir '{item.store.parent}'"
    suffix = f" --suffix {args.suffix}" if args.suffix else ""
    return (f"no feature store '{item.store}' for '{item.input}', and no store in '{item.store.parent}' was made "
            f"from it: give --stores-dir where its store is, or make it with quicksam encode '{item.input}' "
            f"{where}{suffix}")


def store_of_raster(item: BatchItem) -> Optional[Path]:
    """The item's store: the one the naming rule names, else the one store in its folder whose manifest records
    the item's raster (same resolved path; e.g. `north_scene_quicksam` made by a --disambiguate run over more
    inputs); None when there is none (or several)."""
    if is_store_folder(item.store):
        return item.store
    if not item.store.parent.is_dir():
        return None
    found = []
    raster = str(Path(item.input).resolve())
    for folder in sorted(item.store.parent.iterdir()):
        if folder.name.endswith(item.store.name) and is_store_folder(folder):
            try:
                recorded = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["raster"]["path"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if str(Path(recorded).resolve()) == raster:
                found.append(folder)
    return found[0] if len(found) == 1 else None


def _finished_before(result: ItemResult, layer: str) -> Optional[Dict[str, str]]:
    """The options (as its log recorded them) of the earlier run that finished this item's output, None when it is
    not finished: the run of its log that made it (`last_output_run`) ended "done", no unfinished run file is
    next to it, and it has the layer `layer` (whose object count goes into `result`)."""
    from osgeo import gdal

    from ..interactive.run_file import partial_path

    output = Path(result.output)
    made = last_output_run(Path(result.log))
    if made is None or made[0] != DONE or not output.is_file() or partial_path(output).exists():
        return None
    dataset = gdal.OpenEx(str(output), gdal.OF_VECTOR)
    found = dataset is not None and dataset.GetLayerByName(layer) is not None
    if found:
        result.objects = dataset.GetLayerByName(layer).GetFeatureCount()
    dataset = None
    return made[1] if found else None


#: The options that make segment-all's objects, as its item logs record them (`option <name>: <value>`): the
#: settings of the run identity (interactive/automatic.py), the levels and the area. Not --workers, --events...
RESULT_OPTIONS = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                  "stability_score_offset", "box_nms_thresh", "min_mask_region_area", "mask_mode", "min_object_area",
                  "max_object_area", "simplify", "crop_nms_thresh", "crop_n_points_downscale_factor",
                  "skip_covered_points", "levels", "aoi", "extent")


def _refuse_other_settings(result: ItemResult, args: argparse.Namespace, recorded: Mapping[str, str]) -> None:
    """QuickSamError (one line: the options that differ, and --overwrite) when the finished output of `result` was
    made with other settings than `args` (`recorded`: those its log recorded for the run that finished it), as an
    unfinished run with other settings is refused (run_file.differing_settings: the same comparison)."""
    from ..interactive.run_file import differing_settings

    now = {key[len("option "):]: value for key, value in command_settings(args) if key.startswith("option ")}
    differing = differing_settings({key: recorded.get(key) for key in RESULT_OPTIONS},
                                   {key: now.get(key) for key in RESULT_OPTIONS})
    if differing:
        result.objects, result.note = None, OTHER_SETTINGS
        changes = "; ".join(f"--{key.replace('_', '-')} was {recorded.get(key, 'default')}, now "
                            f"{now.get(key, 'default')}" for key in differing)
        raise QuickSamError(f"'{result.output}' was finished with other settings ({changes}); pass --overwrite to "
                            "segment it again, or choose another --output-dir (or --suffix for raster inputs) to "
                            "keep both")


def segment_item(args: argparse.Namespace, events: EventWriter, item: BatchItem, result: ItemResult,
                 stop: Optional[Dict[str, bool]] = None) -> ItemResult:
    """Segment one item's store into its output in the running headless QGIS; its result. KeyboardInterrupt
    when `stop["requested"]` turned True (Ctrl-C, SIGTERM) while it ran: the item's log says "interrupted"."""
    from .segment import check_segment_output
    from .segment_all import _run_segment_all_algorithm

    item_started(events, result)
    result.error = unwritable_log(result)
    if result.error:
        item_finished(events, result)
        return result
    title = f"quicksam segment-all {result.input} -> {result.output}"
    with item_log(result, title, dict(command_settings(args))) as log:
        try:
            store = store_of_raster(item)
            if store is None:
                raise QuickSamError(_missing_store(item, args))
            recorded = None if args.overwrite else _finished_before(result, args.layer)
            if recorded is not None:
                _refuse_other_settings(result, args, recorded)
                result.status, result.note = DONE, ALREADY_FINISHED
                LOGGER.info("already finished, nothing segmented (--overwrite segments it again)")
                result.seconds = log.seconds()
                item_finished(events, result)
                return result
            one = argparse.Namespace(**vars(args))
            one.store = store
            one.output = check_segment_output(item.output, args.overwrite, args.layer).path
            summary = _run_segment_all_algorithm(one, ItemEvents(events, result.index))
            result.tiles, result.objects, result.status = summary["tiles"], summary["objects"], DONE
            _log_messages(summary)
        except (Cancelled, OutputClosed):
            raise
        except Exception as exc:  # noqa: BLE001 - one store's failure is its own; the batch goes on
            if stop and stop.get("requested"):  # Processing turned the signal's KeyboardInterrupt into a failure
                raise KeyboardInterrupt from None
            result.error = one_line_error(exc)
        result.seconds = log.seconds()
    item_finished(events, result)
    return result


def _log_messages(summary: Dict[str, object]) -> None:
    """The run's notes and warnings (the "0 objects" hint...) through the `quicksam` logger: in the item's log and
    on the terminal, as one segment-all prints them."""
    if summary.get("message"):
        LOGGER.info("%s", summary["message"])
    if summary.get("no_objects_reason"):
        LOGGER.warning("%s", summary["no_objects_reason"])


def _segment_all(args: argparse.Namespace, events: EventWriter,
                 items: Sequence[BatchItem]) -> Tuple[List[ItemResult], bool]:
    """Every item in turn; the results so far and whether Ctrl-C or SIGTERM stopped the run."""
    LOGGER.info("QGIS started once for %d input(s)", len(items))
    results: List[ItemResult] = []
    stop = {"requested": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["requested"] = True
        raise KeyboardInterrupt

    with stop_signal_handler(on_signal):
        try:
            for index, item in enumerate(items):
                results.append(new_result(index, items))
                segment_item(args, events, item, results[-1], stop)
        except KeyboardInterrupt:
            return results, True
    return results, False


def run_segment_all_batch(args: argparse.Namespace, events: EventWriter) -> int:
    """Segment every input of the command line; exit status 0 (all done) or EXIT_SOME_FAILED."""
    from .headless import in_headless_qgis

    if args.output is not None:
        raise QuickSamError("--output names one file: leave it out with --output-dir/--next-to-inputs (each "
                            "input's objects go to <store>_objects.gpkg)")
    items = plan_batch(args, _specs(args.store), SEGMENT_ALL, gdal_raster_extensions(), stores=True)
    announce(events, items, args.dry_run)
    if args.suffix and any(is_store_folder(item.input) for item in items):
        events.warning(f"--suffix {args.suffix} does not apply to a store folder given as input: its objects keep "
                       "its name (<store>_objects.gpkg); --suffix finds and names the stores of raster inputs. "
                       "For a second set of objects choose another --output-dir")
    if args.dry_run:
        return dry_run_finished(events, items)
    if args.scheduler:
        check_scheduler(args.scheduler)
    results, interrupted = in_headless_qgis(lambda: _segment_all(args, events, items))
    return finish(events, results, interrupted)


def check_scheduler(scheduler: str) -> None:
    """Connect to the Dask scheduler once and close: QuickSamError (one line, core/cluster.py's) when it cannot be
    reached, before any item runs or writes (each item would otherwise wait for it and fail)."""
    from ..core.cluster import check_scheduler as connect_once

    connect_once(scheduler)


def _specs(stores: Iterable[Path]) -> List[str]:
    return [str(path) for path in stores]
