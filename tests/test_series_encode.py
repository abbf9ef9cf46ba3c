"""Encoding a time series into a series store (encoder/series_pipeline.py, `quicksam encode --series`,
`--frames-from-bands`; docs/time-series.md "Frames and dates").

The synthetic series (tests/series_data.py) is a disk that moves and grows over 8 frames of a 400 x 256 px raster
(two 256 px tiles with a 64 px overlap; EPSG:32633, 10 m pixels, top-left corner (500000, 4200000)); its files,
listed by name, come out of date order. Frame 5 is on a grid shifted by (15 m, 15 m) and frame 3 has nodata over
the right half of its disk. Models are seeded random weights: the tests check plumbing (frames, dates, grids,
stretch, masks, resume), never features' quality.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path
from typing import List

import numpy as np
import pytest
from series_data import (
    DISK_VALUE,
    HEIGHT,
    WIDTH,
    disk_at,
    disk_series,
    nodata_box,
    ramp,
)
from synthetic import (
    MODEL,
    TILE_SIZE,
    assert_one_line_error,
    cli_command,
    default_transform,
    encode_args,
    file_states,
    gradient,
    landsat_path,
    random_model,
    run_cli,
    write_raster,
)

from quicksam.core.errors import QuickSamError
from quicksam.core.store import FeatureStore
from quicksam.core.store_series import frame_store, series_frames
from quicksam.core.tiling import PixelWindow
from quicksam.encoder.frame_dates import FrameSource, dated_frames
from quicksam.encoder.normalise import compute_stretch, sample_windows
from quicksam.encoder.pipeline import EncodeRequest, sample_stretch
from quicksam.encoder.raster import WindowReader
from quicksam.encoder.series_pipeline import encode_series
from quicksam.encoder.series_plan import SeriesRequest

FRAMES = 8
SHIFTED, WITH_NODATA = 5, 3
OVERLAP = 64


def series_request(frames: List[Path], store: Path, **fields) -> SeriesRequest:
    """A series request with the small test model's settings (256 px tiles, 64 px overlap, CPU)."""
    base = EncodeRequest(raster="", store=store, model=MODEL, tile_size=TILE_SIZE, overlap=OVERLAP, device="cpu",
                         levels=fields.pop("levels", (1.0,)))
    return SeriesRequest(base=base, frames=[FrameSource(str(path)) for path in frames], **fields)


@pytest.fixture(scope="module")
def disk_store(tmp_path_factory):
    """(frame paths in date order, the series store) of the disk series, given in file-name order with
    --date-pattern %Y%m%d."""
    folder = tmp_path_factory.mktemp("disk")
    paths = disk_series(folder / "frames", FRAMES, shifted_frame=SHIFTED, nodata_frame=WITH_NODATA)
    by_name = sorted(paths, key=lambda path: path.name)
    assert by_name != paths   # the files listed by name are out of date order
    store, _, _ = encode_series(series_request(by_name, folder / "series.qsam", date_pattern="%Y%m%d"),
                                model=random_model())
    return paths, store


# -- frames and dates ----------------------------------------------------------------------------------------------


def test_frames_are_in_date_order_with_the_dates_of_their_file_names(disk_store):
    paths, store = disk_store
    frames = series_frames(store)
    assert [frame.source for frame in frames] == [str(path) for path in paths]
    assert [frame.datetime for frame in frames] == [disk_at(k, FRAMES).iso for k in range(FRAMES)]
    assert {frame.date_source for frame in frames} == {"filename"}
    assert [frame.folder for frame in frames] == ["."] + [f"frames/t{k:04d}" for k in range(1, FRAMES)]


def test_every_frame_is_a_store_on_frame_0s_grid(disk_store):
    _, store = disk_store
    for frame in series_frames(store):
        opened = frame_store(store, frame)   # refuses another pixel grid, tile grid, model or weights
        assert opened.manifest.pixel_grid == store.manifest.pixel_grid
        assert len(opened.grid) == 2 and not opened.pending_tiles()
    assert store.manifest.raster.path == str(disk_store[0][0])


def test_one_stretch_pooled_over_every_frame(disk_store):
    paths, store = disk_store
    stretches = {frame.index: frame_store(store, frame).manifest.preprocessing.stretch
                 for frame in series_frames(store)}
    assert len(set(stretches.values())) == 1   # the same numbers in every frame's manifest
    frame0_alone = sample_stretch(str(paths[0]), [1, 2, 3], PixelWindow(0, 0, WIDTH, HEIGHT), "percentile")
    assert stretches[0].high != frame0_alone.high   # pooled, not frame 0's own
    # pooled: recomputed from every frame's samples (the shifted one through its VRT) it is the stored one
    samples = []
    for frame in series_frames(store):
        raster = frame_store(store, frame).manifest.raster.path
        with WindowReader(raster, [1, 2, 3]) as reader:
            samples.extend(reader.read(window) for window in sample_windows(PixelWindow(0, 0, WIDTH, HEIGHT)))
    pooled = compute_stretch(samples)
    assert pooled.low == pytest.approx(stretches[0].low, abs=1e-9)
    assert pooled.high == pytest.approx(stretches[0].high, abs=1e-9)


def test_a_frame_on_a_shifted_grid_is_resampled_onto_frame_0s(disk_store):
    _, store = disk_store
    frame = series_frames(store)[SHIFTED]
    assert frame.resampling == "bilinear"
    assert all(other.resampling is None for other in series_frames(store) if other.index != SHIFTED)
    vrt = store.root / "frames" / f"t{SHIFTED:04d}.vrt"
    assert frame_store(store, frame).manifest.raster.path == str(vrt)
    with WindowReader(str(vrt), [1]) as reader:
        data, valid = reader.read(PixelWindow(0, 0, WIDTH, HEIGHT))
    truth = disk_at(SHIFTED, FRAMES)
    # the ramp is linear, so bilinear resampling gives it back at the grid's pixels: within 1 (uint16 rounding);
    # read without resampling (1.5 px off) it would be off by 22.5
    for col, row in ((20, 20), (60, 200), (390, 30), (200, 240)):
        assert abs(float(data[0, row, col]) - ramp(col, row)) <= 1.0, (col, row)
        assert valid[row, col]
    centre = int(truth.centre[0]), int(truth.centre[1])
    assert data[0, centre[1], centre[0]] == DISK_VALUE
    # the shifted raster starts 1.5 px right of the grid and ends 1.5 px above its bottom: no data there
    assert not valid[:, 0].any() and not valid[HEIGHT - 1, :].any()


def test_nodata_over_part_of_the_disk_is_invalid_in_the_valid_mask(disk_store):
    _, store = disk_store
    frame = frame_store(store, series_frames(store)[WITH_NODATA])
    col0, row0, col1, row1 = nodata_box(WITH_NODATA, FRAMES)
    for tile in frame.grid:
        valid = frame.load_valid_mask(tile)
        window = tile.window
        box = np.zeros((tile.size, tile.size), dtype=bool)
        box[max(0, row0 - window.row_off):max(0, row1 - window.row_off),
            max(0, col0 - window.col_off):max(0, col1 - window.col_off)] = True
        inside = np.zeros_like(box)
        inside[:tile.valid_height, :tile.valid_width] = True
        assert not valid[box & inside].any()
        assert valid[~box & inside].all()
    other = frame_store(store, series_frames(store)[WITH_NODATA + 1])
    assert all(other.load_valid_mask(tile)[:tile.valid_height, :tile.valid_width].all() for tile in other.grid)


def write_dated(path: Path, when: str, data=None) -> Path:
    """A small raster with TIFFTAG_DATETIME `when` ("YYYY:MM:DD HH:MM:SS")."""
    import rasterio

    write_raster(path, gradient(40, 30) if data is None else data)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME=when)
    return path


def test_dates_from_the_option_sort_the_frames(tmp_path):
    paths = [write_raster(tmp_path / f"{name}.tif", gradient(40, 30)) for name in "abc"]
    frames = [FrameSource(str(path)) for path in paths]
    dated = dated_frames(frames, dates=["2024-05-01", "2023-12-31T23:00:00", "2024-05-01T00:00:00+02:00"])
    assert [item.frame.source for item in dated] == [str(paths[1]), str(paths[2]), str(paths[0])]
    assert [item.datetime for item in dated] == ["2023-12-31T23:00:00", "2024-04-30T22:00:00",
                                                 "2024-05-01T00:00:00"]
    assert {item.date_source for item in dated} == {"option"}


def test_dates_from_gdal_metadata(tmp_path):
    import rasterio

    late = write_dated(tmp_path / "a.tif", "2021:07:04 10:30:00")
    early = write_raster(tmp_path / "b.tif", gradient(40, 30))
    with rasterio.open(early, "r+") as dst:
        dst.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2020-02-01T09:00:00Z")
    dated = dated_frames([FrameSource(str(late)), FrameSource(str(early))])
    assert [(item.frame.source, item.datetime, item.date_source) for item in dated] == [
        (str(early), "2020-02-01T09:00:00", "metadata"), (str(late), "2021-07-04T10:30:00", "metadata")]


def test_frames_without_dates_keep_the_order_given(tmp_path):
    paths = [write_raster(tmp_path / f"{name}.tif", gradient(40, 30)) for name in "ba"]
    dated = dated_frames([FrameSource(str(path)) for path in paths])
    assert [(item.frame.source, item.datetime, item.date_source) for item in dated] == [
        (str(paths[0]), None, "index"), (str(paths[1]), None, "index")]


def test_band_frames_take_dates_from_band_descriptions_or_band_metadata(tmp_path):
    import rasterio

    stack = write_raster(tmp_path / "stack.tif", gradient(40, 30, bands=3))
    with rasterio.open(stack, "r+") as dst:
        dst.descriptions = ("NDVI 2022-06-01", "NDVI 2022-01-01", "NDVI 2022-03-01")
        for band, when in ((1, "2022:06:01 00:00:00"), (2, "2022:01:01 00:00:00"), (3, "2022:03:01 00:00:00")):
            dst.update_tags(band, DATETIME=when)
    frames = [FrameSource(str(stack), band) for band in (1, 2, 3)]
    by_pattern = dated_frames(frames, date_pattern="%Y-%m-%d")
    by_metadata = dated_frames(frames)
    for dated, source in ((by_pattern, "filename"), (by_metadata, "metadata")):
        assert [item.frame.band for item in dated] == [2, 3, 1]
        assert {item.date_source for item in dated} == {source}


def test_mixed_dated_and_undated_frames_are_refused_in_one_line(tmp_path):
    dated = write_dated(tmp_path / "a.tif", "2021:07:04 10:30:00")
    undated = write_raster(tmp_path / "b.tif", gradient(40, 30))
    result = run_cli(*encode_args(dated, tmp_path / "store", "--series"), )
    assert result.returncode == 1   # one raster with --series: not a series
    result = run_cli("encode", "--series", dated, undated, tmp_path / "store", "--random-weights")
    assert_one_line_error(result, r"b\.tif has no date.*give every frame's date with --dates")
    assert not (tmp_path / "store").exists()


def test_an_unreadable_metadata_date_is_quoted(tmp_path):
    dated = write_dated(tmp_path / "a.tif", "2021:07:04 10:30:00")
    garbage = write_dated(tmp_path / "b.tif", "garbage")
    result = run_cli("encode", "--series", dated, garbage, tmp_path / "store", "--random-weights")
    assert_one_line_error(result, r"b\.tif has an unreadable date in its metadata \(TIFFTAG_DATETIME='garbage'\) "
                                  r"while other frames have one")
    assert not (tmp_path / "store").exists()


def test_frames_without_dates_are_logged_by_their_index_once(tmp_path):
    paths = [write_raster(tmp_path / f"{name}.tif", gradient(40, 30)) for name in "ab"]
    result = run_cli("encode", "--series", *paths, tmp_path / "store", "--random-weights", "--tile-size", TILE_SIZE)
    assert result.returncode == 0, result.stderr
    assert "frame 0: 1 tiles to encode" in result.stderr and "frame 1: 1 tiles to encode" in result.stderr
    assert "(frame " not in result.stderr


def test_a_date_pattern_not_found_in_a_name_is_refused(tmp_path):
    paths = disk_series(tmp_path / "frames", 2)
    other = write_raster(tmp_path / "frames" / "undated.tif", gradient(40, 30))
    result = run_cli("encode", "--series", *paths, other, tmp_path / "store", "--date-pattern", "%Y%m%d",
                     "--random-weights")
    assert_one_line_error(result, r"%Y%m%d.*not found in the file name of undated\.tif")


def test_frames_sharing_a_date_time_are_refused_naming_both(tmp_path):
    a = write_raster(tmp_path / "scene_20240501.tif", gradient(40, 30))
    b = write_raster(tmp_path / "scene_20240615.tif", gradient(40, 30))
    result = run_cli("encode", "--series", a, b, tmp_path / "store", "--date-pattern", "scene_%Y", "--random-weights")
    assert_one_line_error(result, r"frames scene_20240501\.tif and scene_20240615\.tif share the date-time "
                                  r"2024-01-01T00:00:00: give each frame its own date")
    same = [write_dated(tmp_path / name, "2021:07:04 10:30:00") for name in ("c.tif", "d.tif")]
    with pytest.raises(QuickSamError, match=r"c\.tif and d\.tif share the date-time 2021-07-04T10:30:00"):
        dated_frames([FrameSource(str(path)) for path in same])
    assert not (tmp_path / "store").exists()


def test_the_same_raster_or_band_given_twice_is_refused(tmp_path):
    a = write_raster(tmp_path / "a.tif", gradient(40, 30, bands=2))
    result = run_cli("encode", "--series", a, tmp_path / "." / "a.tif", tmp_path / "store", "--dates",
                     "2024-01-01,2024-02-01", "--random-weights")
    assert_one_line_error(result, r"a\.tif is given twice \(frames 1 and 2 in the order given\): give each raster once")
    with pytest.raises(QuickSamError, match=r"a\.tif band 2 is given twice"):
        dated_frames([FrameSource(str(a), 2), FrameSource(str(a), 1), FrameSource(str(a), 2)],
                     dates=["2024-01-01", "2024-02-01", "2024-03-01"])
    assert not (tmp_path / "store").exists()


# -- bad input ---------------------------------------------------------------------------------------------------


def test_several_rasters_without_series_are_refused_saying_to_add_it(tmp_path):
    paths = disk_series(tmp_path / "frames", 2)
    assert_one_line_error(run_cli("encode", *paths, tmp_path / "store", "--random-weights"),
                          r"2 rasters given: add --series")
    assert_one_line_error(run_cli("encode", paths[0], tmp_path / "store", "--dates", "2024-01-01"),
                          r"--dates is for a time series: add --series")
    assert not (tmp_path / "store").exists()


def test_a_frame_that_does_not_overlap_is_refused_naming_it(tmp_path):
    paths = disk_series(tmp_path / "frames", 2)
    far = write_raster(tmp_path / "far.tif", gradient(WIDTH, HEIGHT),
                       transform=default_transform(origin=(600000.0, 4200000.0)))
    result = run_cli("encode", "--series", *paths, far, tmp_path / "store", "--random-weights", "--dates",
                     "2024-01-01,2024-02-01,2024-03-01")
    assert_one_line_error(result, r"frame far\.tif \(bounds 600000, 4197440, 604000, 4200000 in EPSG:32633\) does "
                                  r"not overlap frame 0 \(disk_d_20240301\.tif\) \(bounds \d+, \d+, \d+, \d+ in "
                                  r"EPSG:32633\): every frame")
    assert not (tmp_path / "store").exists()


def test_bands_with_frames_from_bands_are_refused(tmp_path):
    stack = write_raster(tmp_path / "stack.tif", gradient(40, 30, bands=4))
    result = run_cli(*encode_args(stack, tmp_path / "store", "--frames-from-bands", "--bands", "1"))
    assert_one_line_error(result, r"--bands cannot be given with --frames-from-bands")
    assert not (tmp_path / "store").exists()


def test_a_run_with_other_dates_is_refused_and_writes_nothing(disk_store, tmp_path):
    import shutil

    paths, store = disk_store
    copy = tmp_path / "copy.qsam"
    shutil.copytree(store.root, copy)
    before = file_states(copy)
    dates = ",".join(f"2020-01-{day:02d}" for day in range(1, FRAMES + 1))
    result = run_cli("encode", "--series", *paths, copy, "--random-weights", "--tile-size", TILE_SIZE, "--overlap",
                     OVERLAP, "--dates", dates)
    assert_one_line_error(result, r"already holds a series made differently \(frame 0 datetime.*choose another")
    assert file_states(copy) == before


def test_a_plain_encode_or_tile_into_a_series_store_is_refused_and_writes_nothing(disk_store, tmp_path):
    import shutil

    from quicksam.encoder.pipeline import encode_raster

    paths, store = disk_store
    copy = tmp_path / "copy.qsam"
    shutil.copytree(store.root, copy)
    before = file_states(copy)
    advice = r"is a time-series store: .* one frame only; run the same quicksam encode --series"
    for target in (copy, copy / "frames" / "t0001"):
        result = run_cli(*encode_args(paths[0], target, "--levels", "1,2", overlap=OVERLAP))
        assert_one_line_error(result, advice)
    result = run_cli("encode-tile", copy, "--point", "500100,4999900")
    assert_one_line_error(result, r"is a time-series store: an on-demand tile would change one frame only")
    with pytest.raises(QuickSamError, match=advice):
        encode_raster(EncodeRequest(raster=str(paths[0]), store=copy, model=MODEL, tile_size=TILE_SIZE,
                                    overlap=OVERLAP, device="cpu"), model=random_model())
    assert file_states(copy) == before


def test_info_on_a_half_finished_series_gives_series_wide_totals(disk_store, tmp_path):
    import shutil

    _, store = disk_store
    copy = tmp_path / "copy.qsam"
    shutil.copytree(store.root, copy)
    shutil.rmtree(copy / "frames" / "t0002")   # frame 2 not written yet
    info = run_cli("info", copy)
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert (summary["tiles"], summary["tiles_done"]) == (2, 2)   # frame 0's store, as a plain store's tools see it
    assert (summary["series_tiles"], summary["series_tiles_done"]) == (2 * FRAMES, 2 * (FRAMES - 1))
    assert summary["series_complete"] is False and summary["complete"] is False
    assert [frame["tiles"] for frame in summary["frames"]] == [2] * FRAMES


# -- levels, bands, the command line ----------------------------------------------------------------------------------


def test_levels_of_a_series_every_frame_the_same_levels_resampled_frames_too(tmp_path):
    from quicksam.core.store_levels import level_stores

    paths = disk_series(tmp_path / "frames", 2, shifted_frame=1)
    store, _, _ = encode_series(series_request(paths, tmp_path / "series.qsam", levels=(1.0, 2.0),
                                               date_pattern="%Y%m%d"), model=random_model())
    frames = series_frames(store)
    assert frames[1].resampling == "bilinear"
    stores = [level_stores(frame_store(store, frame)) for frame in frames]
    assert [[level.manifest.pixel_grid for level in levels] for levels in stores] == [
        [level.manifest.pixel_grid for level in stores[0]]] * 2
    assert [len(levels) for levels in stores] == [2, 2]
    assert all(not level.pending_tiles() for levels in stores for level in levels)
    assert len({level.manifest.preprocessing.stretch for levels in stores for level in levels}) == 1


def test_frames_from_bands_through_the_cli_and_info_lists_the_frames(tmp_path):
    import rasterio

    stack = write_raster(tmp_path / "stack.tif", gradient(WIDTH, HEIGHT, bands=3))
    with rasterio.open(stack, "r+") as dst:
        dst.descriptions = ("NDVI 2022-06-01", "NDVI 2022-01-01", "NDVI 2022-03-01")
    store = tmp_path / "stack.qsam"
    result = run_cli(*encode_args(stack, store, "--frames-from-bands", "--date-pattern", "%Y-%m-%d", overlap=OVERLAP))
    assert result.returncode == 0, result.stderr
    info = run_cli("info", store)
    assert info.returncode == 0, info.stderr
    frames = json.loads(info.stdout)["frames"]
    assert [(frame["band"], frame["datetime"], frame["date_source"]) for frame in frames] == [
        (2, "2022-01-01T00:00:00", "filename"), (3, "2022-03-01T00:00:00", "filename"),
        (1, "2022-06-01T00:00:00", "filename")]
    assert all(frame["complete"] and frame["tiles_done"] == 2 for frame in frames)
    opened = FeatureStore.open(store)
    assert [frame_store(opened, frame).manifest.preprocessing.bands for frame in series_frames(opened)] == [
        (2, 2, 2), (3, 3, 3), (1, 1, 1)]


@pytest.mark.slow
def test_a_series_from_the_bands_of_the_real_landsat_raster(tmp_path):
    landsat = landsat_path()
    store = tmp_path / "l7.qsam"
    result = run_cli(*encode_args(landsat, store, "--frames-from-bands", "--progress-json", overlap=OVERLAP))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    start = next(event for event in events if event["event"] == "start")
    assert start["frames"] == [f"frame {k}" for k in range(6)]
    assert start["tiles"] == start["todo"] and start["tiles"] % 6 == 0   # the same tiles in each of 6 frames
    summary = events[-1]["summary"]
    assert [(frame["band"], frame["date_source"]) for frame in summary["frames"]] == [(b, "index") for b in range(1, 7)]
    assert summary["complete"]
    opened = FeatureStore.open(store)
    assert len({frame_store(opened, f).manifest.preprocessing.stretch for f in series_frames(opened)}) == 1


def tile_files(store: Path) -> dict:
    """{progress tile id: mtime_ns} of every tile file of a series store (frame k's ids prefixed with its folder)."""
    found = {}
    for path in store.rglob("tiles/*.npy"):
        if path.name.endswith(".valid.npy"):
            continue
        folder = path.parent.parent.relative_to(store).as_posix()
        found[path.stem if folder == "." else f"{folder}/{path.stem}"] = path.stat().st_mtime_ns
    return found


@pytest.mark.slow
def test_an_interrupted_series_encoding_resumes_with_only_the_missing_tiles(tmp_path):
    paths = disk_series(tmp_path / "frames", 4, shifted_frame=2)
    store = tmp_path / "series.qsam"
    args = encode_args(tmp_path / "frames", store, "--series", "--frame-pattern", "disk_*.tif", "--date-pattern",
                       "%Y%m%d", "--progress-json", overlap=OVERLAP)
    process = subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    done = 0
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "progress":
            done = event["done"]
            if done >= 3:   # frame 0 done, frame 1 started
                process.kill()
                break
    process.wait()
    process.stdout.close()
    before = tile_files(store)
    assert 3 <= len(before) < 8
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert next(event for event in events if event["event"] == "start")["todo"] == 8 - len(before)
    encoded_now = {event["tile"] for event in events if event["event"] == "progress"}
    after = tile_files(store)
    assert set(after) == set(before) | encoded_now and not set(before) & encoded_now
    assert {tile: after[tile] for tile in before} == before   # written once, never again
    assert [frame["source"] for frame in events[-1]["summary"]["frames"]] == [str(path) for path in paths]
    assert events[-1]["summary"]["complete"]


# -- Processing -----------------------------------------------------------------------------------------------------


def temporal_layer(path: Path, start: _dt.datetime):
    """A QgsRasterLayer whose temporal properties are a fixed range starting at `start`."""
    from qgis.core import Qgis, QgsDateTimeRange, QgsRasterLayer
    from qgis.PyQt.QtCore import QDateTime

    layer = QgsRasterLayer(str(path), path.stem)
    properties = layer.temporalProperties()
    properties.setMode(Qgis.RasterTemporalMode.FixedTemporalRange)
    properties.setFixedTemporalRange(QgsDateTimeRange(QDateTime(start), QDateTime(start + _dt.timedelta(days=1))))
    properties.setIsActive(True)
    return layer


def test_processing_encodes_a_series_from_a_layer_list_dated_by_their_temporal_ranges(plugin, qgis_processing,
                                                                                          tmp_path):
    import processing
    from qgis.core import QgsProject

    paths = [write_raster(tmp_path / f"scene_{name}.tif", gradient(WIDTH, HEIGHT)) for name in "abc"]
    starts = [_dt.datetime(2023, 5, 1, 10), _dt.datetime(2021, 1, 2), _dt.datetime(2022, 7, 3)]
    layers = [temporal_layer(path, start) for path, start in zip(paths, starts)]
    QgsProject.instance().addMapLayers(layers)
    store = tmp_path / "series.qsam"
    result = processing.run("quicksam:encoderaster", {
        "INPUT": layers[0], "FRAMES": layers[1:], "OUTPUT": str(store), "RANDOM_WEIGHTS": True,
        "TILE_SIZE": TILE_SIZE, "OVERLAP": OVERLAP})
    assert result["OUTPUT"] == str(store)
    frames = series_frames(FeatureStore.open(store))
    assert [(frame.source, frame.datetime, frame.date_source) for frame in frames] == [
        (str(paths[1]), "2021-01-02T00:00:00", "option"), (str(paths[2]), "2022-07-03T00:00:00", "option"),
        (str(paths[0]), "2023-05-01T10:00:00", "option")]
