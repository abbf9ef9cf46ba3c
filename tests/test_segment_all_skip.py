"""Segment everything's opt-in `skip_covered_points`: off by default; on, grid points inside a mask already kept
on the tile are not decoded, and the run says so (its run file's identity, the log, the filter counts)."""

from __future__ import annotations

import json
from typing import List, Tuple

import numpy as np
import pytest
from osgeo import ogr
from synthetic import run_cli, two_tile_store

from quicksam.core.errors import Cancelled
from quicksam.core.mask_decoding import DecoderSettings
from quicksam.interactive.automatic import AutoMaskSettings, partial_path, segment_everything
from quicksam.interactive.filter_counts import FilterCounts
from quicksam.interactive.mask_generator import point_grid, tile_masks
from quicksam.interactive.run_file import RUN_TABLE


class LeftHalfDecoder:
    """Every prompt gives the same three candidates, all the left half of the tile (logits 10 there, -10
    elsewhere), in OnnxDecoder's interface; it records the points it was asked to decode."""

    def __init__(self, image_size: int) -> None:
        low = image_size // 4
        self.logits = np.full((4, low, low), -10.0, np.float32)
        self.logits[:, :, :low // 2] = 10.0
        self.scores = np.array([0.9, 0.9, 0.9, 0.9], np.float32)
        self.image_size = image_size
        self.settings = DecoderSettings()
        self.preferred_batch = 4
        self.decoded: List[Tuple[float, float]] = []

    def raw_points(self, features, points) -> Tuple[np.ndarray, np.ndarray]:
        self.decoded += [tuple(p) for p in np.asarray(points)]
        count = len(points)
        return np.repeat(self.logits[None], count, axis=0), np.repeat(self.scores[None], count, axis=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return two_tile_store(tmp_path_factory.mktemp("segment-all-skip-store"))


SETTINGS = AutoMaskSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            min_mask_region_area=0)


def _run(store, settings: AutoMaskSettings) -> Tuple[LeftHalfDecoder, FilterCounts, list]:
    decoder = LeftHalfDecoder(store.image_size)
    counts = FilterCounts()
    tile = store.grid.tiles[0]
    masks = tile_masks(decoder, {}, tile, settings, None, counts)
    return decoder, counts, masks


def test_skip_covered_points_is_off_by_default(store, plugin):
    from qgis.core import QgsApplication

    from quicksam.cli.segment_all import _add_arguments

    assert AutoMaskSettings().skip_covered_points is False
    algorithm = QgsApplication.processingRegistry().algorithmById("quicksam:segmentall")
    assert algorithm.parameterDefinition("SKIP_COVERED_POINTS").defaultValue() is False
    import argparse

    parser = argparse.ArgumentParser()
    _add_arguments(parser)
    assert parser.parse_args([str(store.root)]).skip_covered_points is False
    # off: every grid point is decoded, none counted as covered
    decoder, counts, _ = _run(store, SETTINGS)
    assert len(decoder.decoded) == 16 and counts.points == 16 and counts.points_covered == 0


def test_on_it_skips_the_points_inside_kept_masks(store):
    settings = AutoMaskSettings(**{**SETTINGS.to_dict(), "skip_covered_points": True})
    decoder, counts, masks = _run(store, settings)
    tile = store.grid.tiles[0]
    grid = point_grid(tile, 4)
    left = grid[:, 0] < store.image_size / 2
    # the first batch (the first row of 4 points) is decoded; its masks cover the left half, so the left
    # points of the three rows below are skipped (2 per row), the right ones decoded
    assert len(decoder.decoded) == 16 - 6 and counts.points == 10 and counts.points_covered == 6
    decoded = {tuple(p) for p in decoder.decoded}
    skipped = [tuple(p) for p in grid if tuple(p) not in decoded]
    assert len(skipped) == 6 and all(left[[tuple(p) for p in grid].index(p)] for p in skipped)
    assert masks, "the kept masks are still there"


def test_a_run_reports_the_points_skipped_per_tile_with_each_finished_tile(store, tmp_path):
    """The count travels with each finished tile's progress event (in one process as on a cluster, where
    tile_masks runs on a worker whose log nobody reads), and only with the opt-in on."""
    events = []
    on = AutoMaskSettings(**{**SETTINGS.to_dict(), "skip_covered_points": True})
    result = segment_everything(store, tmp_path / "on.gpkg", on, progress=events.append)
    finished = [event for event in events if event.tile_finished]
    assert len(finished) == 2 and all(event.points_skipped is not None for event in finished)
    assert sum(event.points_skipped for event in finished) == result.filters.points_covered
    events.clear()
    segment_everything(store, tmp_path / "off.gpkg", SETTINGS, progress=events.append)
    assert all(event.points_skipped is None for event in events)


def test_processing_and_the_cli_log_the_points_skipped_per_tile(store, tmp_path, plugin):
    import processing
    from qgis.core import QgsProcessingFeedback

    lines = []

    class Recording(QgsProcessingFeedback):
        def pushInfo(self, info: str) -> None:
            lines.append(info)

    processing.run("quicksam:segmentall", {
        "STORE": str(store.root), "POINTS_PER_SIDE": 4, "PRED_IOU_THRESH": 0.0, "STABILITY_SCORE_THRESH": 0.0,
        "MIN_MASK_REGION_AREA": 0, "SKIP_COVERED_POINTS": True, "OUTPUT": str(tmp_path / "p.gpkg")},
        feedback=Recording())
    skips = [line for line in lines if "grid points skipped inside masks already kept" in line]
    assert len(skips) == 2 and all(line.startswith("tile r") for line in skips), lines
    # the command line: one info event per tile, not two (the log and the report)
    result = run_cli("segment-all", store.root, "--output", tmp_path / "c.gpkg", "--points-per-side", "4",
                     "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--min-mask-region-area", "0",
                     "--skip-covered-points", "--progress-json")
    assert result.returncode == 0, result.stderr
    infos = [json.loads(line)["message"] for line in result.stdout.splitlines()
             if json.loads(line)["event"] == "info"]
    assert len([line for line in infos if "grid points skipped inside masks already kept" in line]) == 2, infos


def test_the_run_file_records_the_opt_in(store, tmp_path):
    settings = AutoMaskSettings(**{**SETTINGS.to_dict(), "skip_covered_points": True})
    output = tmp_path / "skip.gpkg"
    finished = []

    def on_progress(event) -> None:
        if event.tile_finished:
            finished.append(event.tile_id)

    with pytest.raises(Cancelled):
        segment_everything(store, output, settings, progress=on_progress, cancelled=lambda: bool(finished))
    dataset = ogr.Open(str(partial_path(output)))
    identity = json.loads([feature["identity"] for feature in dataset.GetLayerByName(RUN_TABLE)][0])
    dataset = None
    assert identity["settings"]["skip_covered_points"] is True
    # a run resumed without the opt-in does not mix the two: it names the setting and asks to overwrite
    with pytest.raises(Exception, match=r"other settings \(settings\.skip_covered_points\).*overwrite"):
        segment_everything(store, output, SETTINGS)
