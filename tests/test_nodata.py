"""Nodata never becomes part of an object (issue 8, section 3).

Every kind of invalid pixel GDAL reports (NaN, a nodata value in a float or an integer raster, an alpha
band, an internal mask band, an external .msk file) is kept per tile in the store as a valid-pixel mask;
the engine (dock, hover preview, `quicksam segment`, quicksam:segmentprompts) and segment-all clip every
mask to it, refuse a point on nodata, and say "no data here" for a tile the store records as nodata.

The scene, 600 x 256 px (EPSG:32633, 10 m pixels, see synthetic.py), in three 256 px tiles at columns 0,
172 and 344 (32 px overlap):
  - a bright 120 px square at columns 70..190, rows 70..190, on a darker textured background;
  - nodata: a strip at columns 120..139 (every row) that cuts the square in two, a 60 x 40 px block in
    the top-left corner, and every column from 344 on, so the last tile is all nodata and the middle
    tile is partly nodata.
The seeded random tiny model's masks cover most of a tile: unclipped they cover nodata (each test checks
that the raw decode does, so it can fail), clipped they must not cover a single nodata pixel.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.wkb
from osgeo import ogr
from shapely.geometry import shape
from shapely.ops import unary_union
from synthetic import (
    assert_one_line_error,
    box_at,
    default_transform,
    encode,
    run_cli,
    write_raster,
)
from synthetic import pixel_to_map_default as at

from quicksam.core.errors import StoreError
from quicksam.core.store import FeatureStore
from quicksam.interactive.automatic import AutoMaskSettings, segment_everything
from quicksam.interactive.engine import MapPrompts, PromptError, SegmentEngine
from quicksam.interactive.session import SegmentSession

WIDTH, HEIGHT = 600, 256
SQUARE = (70, 70, 190, 190)              # col0, row0, col1, row1 (half-open)
STRIP = (120, 140)                       # nodata columns through the square
ON_DATA = (100.5, 128.5)                 # inside the square, left of the strip
ON_DATA_RIGHT_TILE = (300.5, 128.5)      # in the middle tile, 44 px from its nodata part
PIXEL_AREA = 100.0                       # m²: 10 m pixels
KINDS = ("nan", "minus9999", "int16", "alpha", "mask", "msk")
#: Thresholds the random model's masks pass; 4 x 4 grid points per tile keep segment-all fast.
LOOSE = AutoMaskSettings(points_per_side=4, points_per_batch=5, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         box_nms_thresh=0.9, min_mask_region_area=4)


def nodata_region() -> np.ndarray:
    """(HEIGHT, WIDTH) bool, True where the scene has no data."""
    region = np.zeros((HEIGHT, WIDTH), dtype=bool)
    region[:, STRIP[0]:STRIP[1]] = True
    region[:40, :60] = True
    region[:, 344:] = True
    return region


def brightness() -> np.ndarray:
    """(HEIGHT, WIDTH) float in 0..1: the bright square on a textured darker background."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    value = 0.2 + 0.05 * ((cols + 2 * rows) % 17) / 17
    col0, row0, col1, row1 = SQUARE
    value[row0:row1, col0:col1] = 0.85
    return value


def write_scene(folder: Path, kind: str) -> Path:
    """The scene as a GeoTIFF whose nodata is marked the `kind` way; returns its path."""
    nodata = nodata_region()
    value = np.stack([brightness()] * 3)
    path = folder / "scene.tif"
    if kind in ("nan", "minus9999"):
        data = (value * 1000).astype(np.float32)
        fill = np.nan if kind == "nan" else -9999.0
        data[:, nodata] = fill
        return write_raster(path, data, nodata=fill)
    if kind == "int16":
        data = (value * 3000).astype(np.int16)
        data[:, nodata] = -32768
        return write_raster(path, data, nodata=-32768)
    rgb = (value * 255).astype(np.uint8)
    rgb[:, nodata] = 250                 # garbage under the transparent or masked part
    if kind == "alpha":
        alpha = np.where(nodata, 0, 255).astype(np.uint8)[np.newaxis]
        return write_raster(path, np.concatenate([rgb, alpha]), colorinterp=["red", "green", "blue", "alpha"])
    if kind == "mask":
        return write_raster(path, rgb, mask=~nodata)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False):  # kind == "msk": the mask in scene.tif.msk
        written = write_raster(path, rgb, mask=~nodata)
    assert Path(str(written) + ".msk").is_file()
    return written


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Callable[[str], Path]:
    """kind -> a folder with scene.tif and its store scene.qsam (encoded once per kind per module)."""
    folders: Dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in folders:
            folder = tmp_path_factory.mktemp(f"nodata-{kind}")
            store, _ = encode(write_scene(folder, kind), folder / "scene.qsam", overlap=32)
            assert [t.col_off for t in store.grid] == [0, 172, 344]
            assert [store.status(t) for t in store.grid] == ["done", "done", "nodata"]
            folders[kind] = folder
        return folders[kind]

    return get


@pytest.fixture(params=KINDS)
def engine(request, encoded) -> SegmentEngine:
    return SegmentEngine.open(encoded(request.param) / "scene.qsam")


# -- geometry checks -------------------------------------------------------------------------------------


def click(col: float, row: float) -> MapPrompts:
    return MapPrompts().with_point(*at(col, row), 1)


def nodata_polygons():
    """The nodata region as polygons in the raster CRS (exact pixel edges)."""
    region = nodata_region().astype(np.uint8)
    return unary_union([shape(geometry) for geometry, _ in
                        rasterio.features.shapes(region, mask=region.astype(bool), transform=default_transform())])


def covered_pixels(geometry) -> np.ndarray:
    """(HEIGHT, WIDTH) bool: the pixels whose centre lies inside `geometry` (raster CRS)."""
    return rasterio.features.rasterize([geometry], out_shape=(HEIGHT, WIDTH), transform=default_transform(),
                                       fill=0, default_value=1, dtype="uint8").astype(bool)


def assert_covers_no_nodata(geometry) -> None:
    """Exact: the polygon follows pixel edges (its area is its pixel count times the pixel area), none of
    its pixels is nodata, and its overlap with the nodata region has no area."""
    assert not geometry.is_empty
    pixels = covered_pixels(geometry)
    # Pixel-aligned: then "no covered pixel centre is nodata" means "no nodata pixel is covered". The
    # areas are sums of 100 m² squares at coordinates that are multiples of 10 m (exact in binary
    # floating point up to GEOS's summation order), hence a tolerance far below one pixel.
    assert geometry.area == pytest.approx(pixels.sum() * PIXEL_AREA, abs=1e-6)
    assert not (pixels & nodata_region()).any(), f"{(pixels & nodata_region()).sum()} nodata pixels covered"
    # Shared edges give an overlap of zero area; 1e-6 m² allows GEOS's overlay rounding, not a pixel.
    assert geometry.intersection(nodata_polygons()).area <= 1e-6


def as_shapely(segment):
    return shapely.wkb.loads(segment.geometry.wkb)


def raw_masks_cover_nodata(engine: SegmentEngine, prompts: MapPrompts) -> bool:
    """True when the decoder's unclipped masks for `prompts` cover nodata inside the raster: without
    clipping the object would hold nodata (so a test using these prompts can fail)."""
    tile = engine.choose_tile(prompts)
    result = engine.decoder.decode(engine.cache.get(tile.tile_id), engine.tile_prompts(prompts, tile),
                                   multimask=True)
    window = nodata_region()[tile.row_off:tile.row_off + tile.valid_height,
                             tile.col_off:tile.col_off + tile.valid_width]
    return any((mask[:tile.valid_height, :tile.valid_width] & window).any() for mask in result.masks)


# -- the store keeps the masks -----------------------------------------------------------------------------


def test_the_store_keeps_each_tiles_valid_mask_packed_with_its_crc(encoded):
    root = encoded("nan") / "scene.qsam"
    store = FeatureStore.open(root)
    records = store.records()
    nodata = nodata_region()
    for tile in store.grid.tiles[:2]:
        path = root / "tiles" / f"{tile.tile_id}.valid.npy"
        packed = np.load(path, allow_pickle=False)
        assert packed.dtype == np.uint8 and packed.shape == (256 * 256 // 8,)
        assert records[tile.tile_id].valid_crc32 == zlib.crc32(packed.tobytes())
        expected = ~nodata[:, tile.col_off:tile.col_off + 256]
        assert np.array_equal(np.unpackbits(packed).reshape(256, 256).astype(bool), expected)
        assert np.array_equal(store.load_valid_mask(tile), expected)
    last = store.grid.tiles[2]
    assert not (root / "tiles" / f"{last.tile_id}.valid.npy").exists()
    assert not store.load_valid_mask(last).any()


def test_a_fully_valid_tile_stores_no_mask_and_padding_is_invalid(tmp_path):
    raster = write_raster(tmp_path / "small.tif", (np.stack([brightness()[:100, :150]] * 3) * 255).astype(np.uint8))
    store, _ = encode(raster, tmp_path / "store")
    (tile,) = store.grid
    assert store.records()[tile.tile_id].valid_crc32 is None
    assert [p.name for p in (tmp_path / "store" / "tiles").iterdir()] == [f"{tile.tile_id}.npy"]
    valid = store.load_valid_mask(tile)
    assert valid[:100, :150].all() and not valid[100:].any() and not valid[:, 150:].any()


@pytest.mark.parametrize("damage", ["flipped", "missing", "truncated"])
def test_a_damaged_mask_is_reported_by_tile_and_file(encoded, tmp_path, damage):
    root = Path(shutil.copytree(encoded("nan") / "scene.qsam", tmp_path / "store"))
    path = root / "tiles" / "r0000c0000.valid.npy"
    if damage == "flipped":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    engine = SegmentEngine.open(root)
    with pytest.raises(StoreError, match=r"valid-pixel mask of tile r0000c0000 .*(re-encode|re-run)"):
        engine.segment(click(*ON_DATA))


# -- the engine: dock, hover, `quicksam segment`, quicksam:segmentprompts ----------------------------------


@pytest.mark.parametrize("pixel", [(130.5, 128.5), (20.5, 20.5), (400.5, 128.5), (120.0, 30.0)])
def test_a_point_on_nodata_is_refused_with_a_message(engine, pixel):
    with pytest.raises(PromptError, match="^no data at this point"):
        engine.segment(click(*pixel))
    session = SegmentSession(engine)
    with pytest.raises(PromptError, match="^no data at this point"):
        session.add_point(*at(*pixel), 1)
    with pytest.raises(PromptError, match="^no data at this point"):  # background points too
        session.add_point(*at(*pixel), 0)
    assert session.prompts.is_empty()
    with pytest.raises(PromptError, match="^no data at this point"):  # hover: nothing to preview
        session.preview_prompts(*at(*pixel))


@pytest.mark.parametrize("pixel", [ON_DATA, ON_DATA_RIGHT_TILE])
def test_an_object_touching_nodata_covers_no_nodata_pixel(engine, pixel):
    prompts = click(*pixel)
    assert raw_masks_cover_nodata(engine, prompts)
    segments = engine.segment(prompts, mode="all")
    assert len(segments) == 3
    for segment in segments:
        polygon = as_shapely(segment)
        assert_covers_no_nodata(polygon)
        assert segment.mask_pixels == covered_pixels(polygon).sum()


def test_nodata_through_the_middle_of_an_object_splits_it_never_bridges(engine):
    prompts = click(*ON_DATA)
    assert raw_masks_cover_nodata(engine, prompts)
    (segment,) = engine.segment(prompts)
    polygon = as_shapely(segment)
    assert_covers_no_nodata(polygon)
    left = shapely.box(*box_at(0, 0, STRIP[0], HEIGHT))
    right = shapely.box(*box_at(STRIP[1], 0, WIDTH, HEIGHT))
    parts = list(getattr(polygon, "geoms", [polygon]))
    for part in parts:  # each part lies on one side of the strip
        assert part.intersection(left).area == 0 or part.intersection(right).area == 0
    if polygon.intersection(left).area > 0 and polygon.intersection(right).area > 0:
        assert len(parts) >= 2


def test_a_box_partly_over_nodata_is_clipped_and_one_over_nodata_only_is_refused(engine):
    prompts = MapPrompts().with_box(box_at(80, 60, 180, 200))
    assert raw_masks_cover_nodata(engine, prompts)
    (segment,) = engine.segment(prompts)
    assert_covers_no_nodata(as_shapely(segment))
    with pytest.raises(PromptError, match="^no data inside this box"):
        engine.segment(MapPrompts().with_box(box_at(122, 60, 138, 200)))


@pytest.mark.parametrize("prompts", [
    click(500.5, 128.5),
    MapPrompts().with_box(box_at(450, 50, 550, 150)),
])
def test_a_tile_the_store_records_as_nodata_says_no_data_here(engine, prompts):
    with pytest.raises(PromptError, match="^no data here") as raised:
        engine.segment(prompts)
    assert "did not finish" not in str(raised.value)


# -- segment everything --------------------------------------------------------------------------------------


def test_segment_all_writes_no_polygon_over_nodata_and_no_grid_point_on_it(engine, tmp_path, monkeypatch):
    from quicksam.interactive import mask_generator

    decoded: List[Tuple[int, np.ndarray]] = []
    original = mask_generator._batch_candidates

    def recording(decoder, features, tile, settings, points, *rest):
        decoded.append((tile.col_off, np.array(points)))
        return original(decoder, features, tile, settings, points, *rest)

    monkeypatch.setattr(mask_generator, "_batch_candidates", recording)
    output = tmp_path / "all.gpkg"
    result = segment_everything(engine.store, output, LOOSE, engine=engine)
    assert result.tiles == 2 and result.objects > 0
    dataset = ogr.Open(str(output))
    polygons = [shapely.wkb.loads(bytes(f.GetGeometryRef().ExportToIsoWkb())) for f in dataset.GetLayer(0)]
    dataset = None
    assert len(polygons) == result.objects
    for polygon in polygons:
        assert_covers_no_nodata(polygon)
    # 4 x 4 grid points per tile at tile pixels 32, 96, 160, 224: the first tile's (32, 32) lies in the
    # nodata corner, the middle tile's column 224 (raster column 396) in its nodata part: 27 of 32 are
    # decoded, none on nodata.
    assert sum(len(points) for _, points in decoded) == 27
    for col_off, points in decoded:
        for col, row in points:
            assert not nodata_region()[int(row), int(col) + col_off], (col_off, col, row)


# -- a store written before masks were kept -----------------------------------------------------------------


def strip_masks(root: Path) -> None:
    """Make `root` what QuickSAM wrote before valid masks were kept: no .valid.npy files, no
    valid_crc32 in the tile log."""
    for path in (root / "tiles").glob("*.valid.npy"):
        path.unlink()
    lines = [json.loads(line) for line in (root / "tiles.jsonl").read_text().splitlines()]
    (root / "tiles.jsonl").write_text("".join(json.dumps({k: v for k, v in line.items() if k != "valid_crc32"}) + "\n"
                                              for line in lines))


def test_a_store_without_masks_still_segments_and_knows_its_nodata_tiles(engine, tmp_path):
    root = Path(shutil.copytree(engine.store.root, tmp_path / "old.qsam"))
    strip_masks(root)
    assert "valid_crc32" not in (root / "tiles.jsonl").read_text()
    old = SegmentEngine.open(root)
    (segment,) = old.segment(click(*ON_DATA))
    polygon = as_shapely(segment)
    assert not polygon.is_empty and polygon.within(shapely.box(*box_at(0, 0, WIDTH, HEIGHT)))
    with pytest.raises(PromptError, match="^no data here"):
        old.segment(click(500.5, 128.5))
    result = segment_everything(old.store, tmp_path / "all.gpkg", LOOSE, engine=old)
    assert result.tiles == 2 and result.objects > 0


# -- the dock and its hover preview ------------------------------------------------------------------------


@pytest.fixture
def dock(encoded, tmp_path, show_raster, qgis_iface):
    """The Segment dock on a fresh copy of the NaN scene, its tool active on conftest's 800 x 600 canvas."""
    from qgis.core import QgsApplication

    from quicksam.ui import settings
    from quicksam.ui.dock.dock import SegmentDock

    scene = Path(shutil.copytree(encoded("nan"), tmp_path / "scene"))
    for setting in (settings.KNOWN_STORES, settings.HOVER_PREVIEW, settings.HOVER_DELAY_MS):
        setting.reset()
    settings.HOVER_DELAY_MS.set_value(30)
    show_raster(scene / "scene.tif")
    widget = SegmentDock(qgis_iface, qgis_iface.mainWindow())
    widget.setUserVisible(True)
    QgsApplication.processEvents()
    assert widget.controller.session is not None, widget.statusLabel.text()
    yield widget
    widget.release()
    widget.deleteLater()
    QgsApplication.processEvents()
    for setting in (settings.KNOWN_STORES, settings.HOVER_PREVIEW, settings.HOVER_DELAY_MS):
        setting.reset()


def _mouse(dock, kind, col: float, row: float):
    from qgis.gui import QgsMapMouseEvent
    from qgis.PyQt.QtCore import QEvent, QPoint, Qt

    canvas = dock.controller.canvas
    pixel = canvas.getCoordinateTransform().transform(*at(col, row))
    button = Qt.MouseButton.NoButton if kind == QEvent.Type.MouseMove else Qt.MouseButton.LeftButton
    return QgsMapMouseEvent(canvas, kind, QPoint(round(pixel.x()), round(pixel.y())), button, button,
                            Qt.KeyboardModifier.NoModifier)


def test_the_dock_refuses_a_click_on_nodata_with_the_message(dock):
    from qgis.PyQt.QtCore import QEvent

    controller = dock.controller
    tool = controller.tool
    tool.canvasPressEvent(_mouse(dock, QEvent.Type.MouseButtonPress, 130.5, 128.5))
    tool.canvasReleaseEvent(_mouse(dock, QEvent.Type.MouseButtonRelease, 130.5, 128.5))
    assert controller.wait_idle()
    assert dock.statusLabel.text().startswith("no data at this point")
    assert controller.session.prompts.is_empty()
    assert controller.worker.stats.by_kind.get("object", 0) == 0


def test_the_hover_preview_shows_the_clipped_mask(dock):
    from qgis.PyQt.QtCore import QEvent

    controller = dock.controller
    tool = controller.tool
    event = _mouse(dock, QEvent.Type.MouseMove, *ON_DATA)
    tool.canvasMoveEvent(event)
    assert controller.wait_idle()
    preview = tool.preview_band.asGeometry()
    assert not preview.isEmpty()
    point = event.mapPoint()
    assert raw_masks_cover_nodata(controller.session.engine, click(*controller.session.engine.to_pixels(
        point.x(), point.y())))
    assert_covers_no_nodata(shapely.wkb.loads(bytes(preview.asWkb())))


# -- `quicksam segment` (runs quicksam:segmentprompts in headless QGIS) --------------------------------------


def test_cli_segment_refuses_nodata_and_writes_clipped_polygons(encoded, tmp_path):
    store = encoded("int16") / "scene.qsam"
    refused = run_cli("segment", store, "--point", ",".join(map(repr, at(130.5, 128.5))),
                      "--output", tmp_path / "refused.gpkg")
    assert_one_line_error(refused, r"no data at this point")
    assert not (tmp_path / "refused.gpkg").exists()
    output = tmp_path / "out.gpkg"
    result = run_cli("segment", store, "--point", ",".join(map(repr, at(*ON_DATA))), "--output", output)
    assert result.returncode == 0, result.stderr
    dataset = ogr.Open(str(output))
    (polygon,) = [shapely.wkb.loads(bytes(f.GetGeometryRef().ExportToIsoWkb())) for f in dataset.GetLayer(0)]
    dataset = None
    assert_covers_no_nodata(polygon)
