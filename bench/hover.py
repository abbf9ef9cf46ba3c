"""Hover benchmark: previews drawn per second while the cursor moves over a real canvas, and how long the GUI
thread is blocked; prints one JSON object.

    .venv/bin/python bench/hover.py [--seconds 8] [--hz 60] [--rounds 4]

A real QgsApplication (offscreen), a real QgsMapCanvas showing a 1024 x 1024 px raster encoded with the
seeded random SAM 2.1 tiny model (1024 px tiles, bench/encode.py's scene of bright rectangles), and the
Segment dock's controller and map tool wired as the dock wires them. The cursor moves along a closed path
across the scene's objects: QMouseEvent moves sent to the canvas's viewport at `--hz` (the canvas hands them
to the map tool, as for a real mouse).

- previews per second: rubber-band updates of the preview (SegmentMapTool.show_preview calls), not decodes;
- GUI thread: the time of each move event's handling and of each preview drawn (ms, max and p99), and the
  lateness of a 1 ms QTimer running throughout (ms beyond its interval, max and p99): nothing on the GUI
  thread may block longer than one frame (16 ms);
- masks: `moving_random_masks` draws what the random model gives (~90 % of the tile, riddled with holes:
  shapes no user makes); every other scenario is object-sized: the decoder runs as usual, then its logits
  are replaced by the scene's true object under the cursor (`object_sized_logits`), labelled as such;
- the decoder graph alone on the same tile (p50 ms): previews per second cannot exceed 1000 / it;
- scenarios: `moving` (the cursor never rests), `rest` (moves 300 ms, rests 500 ms, again: the rest delay's
  full-resolution preview), and `moving_full_resolution` (the same moves, each preview decoded and vectorised
  at full resolution as at a rest: what the low-resolution preview buys). The scenarios run in interleaved
  stretches (`--rounds`), so a change of the machine's load falls on all of them alike.
The previous dock waited for the cursor to rest (200 ms) before any preview: 0 previews while it moves.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from encode import MODEL, TILE, write_test_raster  # noqa: E402

FRAME_MS = 16.0
TARGET_PREVIEWS_PER_SECOND = 20.0


def stats_ms(values: List[float]) -> Dict[str, float]:
    """max, p99 and p50 of durations in seconds, as milliseconds."""
    if not values:
        return {"max_ms": 0.0, "p99_ms": 0.0, "p50_ms": 0.0, "n": 0}
    array = np.asarray(values) * 1000
    return {"max_ms": round(float(array.max()), 2), "p99_ms": round(float(np.percentile(array, 99)), 2),
            "p50_ms": round(float(np.median(array)), 2), "n": len(values)}


def encode_scene(work: Path) -> Path:
    import torch

    from quicksam.encoder.models import build_model
    from quicksam.encoder.pipeline import EncodeRequest, encode_raster

    torch.set_num_threads(2)
    raster = write_test_raster(work / "scene.tif", 1)
    encode_raster(EncodeRequest(raster=str(raster), store=work / "scene.qsam", overlap=0, stretch="none"),
                  model=build_model(MODEL, seed=0))
    return raster


def open_canvas(raster: Path):
    """A shown canvas (800 x 800 px) on the raster, in its CRS, and the raster layer."""
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    layer = QgsRasterLayer(str(raster), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    canvas = QgsMapCanvas()
    canvas.resize(800, 800)
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    canvas.setExtent(layer.extent())
    canvas.show()
    canvas.refresh()
    return canvas, layer


class GuiProbe:
    """Measures the GUI thread: a 1 ms precise QTimer's lateness and the time of wrapped handlers."""

    def __init__(self) -> None:
        from qgis.PyQt.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(1)
        self.timer.timeout.connect(self._tick)
        self.lateness: List[float] = []
        self.durations: Dict[str, List[float]] = {}
        self._last = 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last:
            self.lateness.append(max(0.0, now - self._last - 0.001))
        self._last = now

    def start(self) -> None:
        self.lateness.clear()
        self.durations.clear()
        self._last = 0.0
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def timed(self, name: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.durations.setdefault(name, []).append(time.perf_counter() - started)
        return wrapper


def cursor_path(canvas, steps: int) -> List:
    """`steps` screen positions along a Lissajous curve over the middle 80 % of the canvas."""
    from qgis.PyQt.QtCore import QPoint

    width, height = canvas.width(), canvas.height()
    return [QPoint(int(width * (0.5 + 0.4 * math.sin(2 * math.pi * i / steps * 3))),
                   int(height * (0.5 + 0.4 * math.sin(2 * math.pi * i / steps * 2 + 0.5))))
            for i in range(steps)]


def send_move(canvas, pixel) -> None:
    from qgis.PyQt.QtCore import QEvent, QPointF, Qt
    from qgis.PyQt.QtGui import QMouseEvent
    from qgis.PyQt.QtWidgets import QApplication

    event = QMouseEvent(QEvent.Type.MouseMove, QPointF(pixel), Qt.MouseButton.NoButton, Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas.viewport(), event)


def drive(canvas, probe: GuiProbe, seconds: float, hz: float, rest_pattern: bool) -> float:
    """Move the cursor for `seconds` in Qt's own event loop: a precise timer sends a move at `hz` (with
    `rest_pattern`, only in the first 300 ms of every 800 ms: then the cursor rests 500 ms); returns the
    seconds elapsed."""
    from qgis.PyQt.QtCore import QEventLoop, Qt, QTimer

    path = cursor_path(canvas, int(seconds * hz))
    move = probe.timed("move_event", send_move)
    state = {"index": 0, "started": time.perf_counter()}

    def tick() -> None:
        if rest_pattern and (time.perf_counter() - state["started"]) % 0.8 >= 0.3:
            return  # resting where it stopped
        move(canvas, path[state["index"] % len(path)])
        state["index"] += 1

    mover = QTimer()
    mover.setTimerType(Qt.TimerType.PreciseTimer)
    mover.setInterval(round(1000 / hz))
    mover.timeout.connect(tick)
    loop = QEventLoop()
    QTimer.singleShot(round(seconds * 1000), loop.quit)
    state["started"] = time.perf_counter()
    mover.start()
    loop.exec()
    mover.stop()
    return time.perf_counter() - state["started"]


def sample(controller, probe: GuiProbe, seconds: float, hz: float, rest_pattern: bool) -> dict:
    """One stretch of cursor moves: raw durations (seconds) and counts."""
    controller.wait_idle(30)
    controller.tool.clear_preview()
    stats = controller.worker.stats
    before = (stats.requests, stats.low_res_requests, stats.stale)
    probe.start()
    elapsed = drive(controller.canvas, probe, seconds, hz, rest_pattern)
    probe.stop()
    return {"seconds": elapsed, "moves": list(probe.durations.get("move_event", [])),
            "draws": list(probe.durations.get("show_preview", [])), "lateness": list(probe.lateness),
            "low_res": stats.low_res_requests - before[1],
            "full_res": (stats.requests - before[0]) - (stats.low_res_requests - before[1]),
            "stale": stats.stale - before[2]}


def summary(samples: List[dict]) -> dict:
    """One scenario's figures over its stretches (see the module docstring)."""
    elapsed = sum(item["seconds"] for item in samples)
    moves, draws, lateness = ([value for item in samples for value in item[key]]
                              for key in ("moves", "draws", "lateness"))
    result = {
        "seconds": round(elapsed, 2), "move_events": len(moves),
        "previews_drawn": len(draws), "previews_per_second": round(len(draws) / elapsed, 2),
        "decode_requests": {key: sum(item[key] for item in samples) for key in ("low_res", "full_res", "stale")},
        "gui_move_event_handler": stats_ms(moves), "gui_preview_draw": stats_ms(draws),
        "gui_timer_1ms_lateness": stats_ms(lateness),
    }
    result["gui_longest_block_ms"] = max(stats_ms(lateness)["max_ms"], stats_ms(moves + draws)["max_ms"])
    return result


def full_resolution_moves():
    """Make the moving cursor's previews full-resolution decodes (the comparison scenario); returns the undo."""
    from quicksam.interactive.session import segment_prompts
    from quicksam.ui.dock import decode_worker

    original = decode_worker.preview_segments
    decode_worker.preview_segments = segment_prompts

    def undo() -> None:
        decode_worker.preview_segments = original
    return undo


def scene_objects(size: int) -> np.ndarray:
    """(size, size) int32: bench/encode.py's `write_test_raster` rectangles (its RNG replayed), labelled as
    4-connected objects (0 = background). AssertionError if the replay does not give the raster written."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    data = rng.integers(0, 80, (3, size, size), dtype=np.uint8)
    union = np.zeros((size, size), dtype=bool)
    for _ in range(40 * (size // TILE) ** 2):
        r, c = rng.integers(0, size - 120, 2)
        height, width = rng.integers(20, 120), rng.integers(20, 120)  # the order write_test_raster draws them
        data[:, r:r + height, c:c + width] += rng.integers(40, 170, (3, 1, 1), dtype=np.uint8)
        union[r:r + height, c:c + width] = True
    labels, _ = ndimage.label(union)
    return labels, data


def object_sized_logits(decoder, labels: np.ndarray) -> Callable[[], None]:
    """Make `decoder.raw` run as usual, then give logits (+-8) of the scene's true object under the first
    point (a disc of 40 px radius on background: a small field), so drawing and vectorising cost what real
    objects cost (random weights give masks of ~90 % of the tile); returns the undo."""
    original = decoder.raw

    def raw(features, prompts):
        logits, scores = original(features, prompts)
        size, low = labels.shape[0], logits.shape[-1]
        scale = size // low
        x, y = (int(v) for v in prompts.points[0])
        label = labels[min(y, size - 1), min(x, size - 1)]
        centres = np.arange(low) * scale + scale // 2
        if label:
            mask = labels[np.ix_(centres, centres)] == label
        else:
            mask = (centres[:, None] - y) ** 2 + (centres[None, :] - x) ** 2 <= 40 ** 2
        return np.broadcast_to(np.where(mask, 8.0, -8.0).astype(np.float32), logits.shape).copy(), scores

    decoder.raw = raw

    def undo() -> None:
        del decoder.raw
    return undo


def decoder_alone_ms(engine, repeats: int = 12) -> float:
    """p50 milliseconds of the decoder graph alone (one point prompt, warm features) on the scene's tile: the
    ceiling of previews per second is 1000 / this, whatever the preview path does around it."""
    from quicksam.interactive.engine import MapPrompts

    tile = next(iter(engine.store.grid))
    x, y = engine.store.geotransform[0] + 200.0, engine.store.geotransform[3] - 200.0
    prompts = engine.tile_prompts(MapPrompts().with_point(x, y, 1), tile)
    features = engine.cache.get(tile.tile_id)
    engine.decoder.raw(features, prompts)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.decoder.raw(features, prompts)
        runs.append(time.perf_counter() - started)
    return round(float(np.median(runs)) * 1000, 2)


def measure(raster: Path, seconds: float, hz: float, rounds: int) -> dict:
    """Every scenario in `rounds` interleaved stretches of seconds / rounds each (the machine's load changes
    alike for all), and the decoder alone between them."""
    from osgeo import gdal
    from qgis.core import QgsProject

    from quicksam.ui import settings
    from quicksam.ui.dock.controller import SegmentController

    canvas, layer = open_canvas(raster)
    controller = SegmentController(canvas, QgsProject.instance())
    controller.set_raster_layer(layer)
    assert controller.store is not None, controller.problem
    controller.activate_tool()
    probe = GuiProbe()
    controller.tool.show_preview = probe.timed("show_preview", controller.tool.show_preview)
    labels, data = scene_objects(layer.width())
    assert np.array_equal(data, gdal.Open(str(raster)).ReadAsArray()), "the scene's objects were not replayed"
    engine = controller.session.engine
    sample(controller, probe, 1.0, hz, False)  # warm up: the tile's features and masks in memory
    samples: Dict[str, List[dict]] = {"moving_random_masks": [], "moving": [], "rest": [], "moving_full_resolution": []}
    decoder = []
    stretch = seconds / rounds
    for _ in range(rounds):
        decoder.append(decoder_alone_ms(engine, 4))
        samples["moving_random_masks"].append(sample(controller, probe, stretch, hz, False))
        undo_objects = object_sized_logits(engine.decoder, labels)
        samples["moving"].append(sample(controller, probe, stretch, hz, False))
        samples["rest"].append(sample(controller, probe, stretch, hz, True))
        undo = full_resolution_moves()
        samples["moving_full_resolution"].append(sample(controller, probe, stretch, hz, False))
        undo()
        undo_objects()
    controller.release()
    return {"rest_delay_ms": settings.HOVER_DELAY_MS.value(), "rounds": rounds,
            "decoder_alone_p50_ms": round(float(np.median(decoder)), 2),
            **{name: summary(items) for name, items in samples.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="per scenario, over all rounds")
    parser.add_argument("--hz", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved stretches of every scenario")
    args = parser.parse_args()
    from qgis.core import QgsApplication, QgsProject

    app = QgsApplication([], True)
    app.initQgis()
    work = Path(tempfile.mkdtemp(prefix="quicksam-bench-hover-"))
    try:
        raster = encode_scene(work)
        figures = measure(raster, args.seconds, args.hz, args.rounds)
        moving = figures["moving"]
        result = {"model": MODEL, "weights": "random (seeded)", "tile_px": TILE, "cursor_hz": args.hz,
                  "loadavg": Path("/proc/loadavg").read_text().split()[:3], **figures,
                  "ratios": {"previews_per_second_over_decoder_rate": round(
                      moving["previews_per_second"] * figures["decoder_alone_p50_ms"] / 1000, 2),
                             "low_res_over_full_res_previews_per_second": round(
                      moving["previews_per_second"] / max(figures["moving_full_resolution"]["previews_per_second"],
                                                          1e-9), 2)}}
        result["targets"] = {
            "previews_per_second_at_least_20": {"met": moving["previews_per_second"] >= TARGET_PREVIEWS_PER_SECOND,
                                                "value": moving["previews_per_second"]},
            "gui_block_at_most_16_ms_moving": {"met": moving["gui_longest_block_ms"] <= FRAME_MS,
                                               "value": moving["gui_longest_block_ms"]},
            "gui_block_at_most_16_ms_rest": {"met": figures["rest"]["gui_longest_block_ms"] <= FRAME_MS,
                                             "value": figures["rest"]["gui_longest_block_ms"]},
        }
        print(json.dumps(result, indent=2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        QgsProject.instance().removeAllMapLayers()
    os._exit(0)  # exitQgis with the canvas's render threads about segfaults on this QGIS; nothing left to save


if __name__ == "__main__":
    main()
