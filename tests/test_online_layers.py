"""Online layers (issue 11): XYZ tiles and a COG over HTTP, served by a local server on 127.0.0.1 (tile_server.py).

The XYZ tiles are cut from a synthetic EPSG:3857 scene and the COG is built from a synthetic EPSG:32633 raster,
both with bright squares at known map coordinates. The encoder runs as `quicksam encode` processes and through
the Processing algorithm (random weights, one 256 px tile per store, to keep the tests quick).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest
import tile_server
from rasterio.windows import Window
from synthetic import assert_one_line_error, box_at, encode_args, run_cli
from tile_server import SCENE_ZOOM, SQUARES, TileServer, scene_box, zoom_pixel_size

from quicksam.core.errors import RasterError
from quicksam.core.geo import map_to_pixel, window_outline
from quicksam.core.store import FeatureStore
from quicksam.encoder.network_reads import MAX_CONNECTIONS, open_network
from quicksam.encoder.online_sources import (
    WEB_MERCATOR_HALF,
    extent_in_raster_crs,
    network_fingerprint,
    resolve_source,
)
from quicksam.encoder.qgis_uris import source_from_qgis_uri
from quicksam.encoder.raster import WindowReader

#: The encoded part of the XYZ scene: pixels 128..384 at SCENE_ZOOM, one 256 px model tile holding both squares
#: and straddling four XYZ tiles (so that they can be fetched in parallel); half a pixel inside, so that rounding
#: cannot add a row of tiles.
XYZ_EXTENT = scene_box(128.5, 128.5, 383.5, 383.5)
#: The same for the COG (EPSG:32633): its columns 368..624 and rows 112..368, one model tile over four of the COG's
#: 256 px blocks.
COG_EXTENT = box_at(368.5, 112.5, 623.5, 367.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The local server, with /cog.tif built from `tile_server.cog_scene()`."""
    running = TileServer(cog=tile_server.build_cog(tmp_path_factory.mktemp("cog")))
    yield running
    running.close()


@pytest.fixture
def tiles(server, monkeypatch):
    """The server with a fresh log and no refusals; retries wait 10 ms (GDAL_HTTP_RETRY_DELAY, also read by the
    encoder processes started by the test)."""
    server.reset_log()
    server.too_many_first, server.refuse_with = 0, None
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.01")
    yield server
    server.too_many_first, server.refuse_with = 0, None


def extent_arg(extent) -> str:
    return "--extent=" + ",".join(repr(value) for value in extent)


def footprints(store: FeatureStore) -> List[Tuple[float, float, float, float]]:
    """(xmin, ymin, xmax, ymax) of every tile's valid area, in the store's CRS."""
    geotransform = store.manifest.raster.geotransform
    boxes = []
    for tile in store.grid:
        xs, ys = zip(*window_outline(geotransform, tile.window))
        boxes.append((min(xs), min(ys), max(xs), max(ys)))
    return boxes


def assert_some_tile_holds(store: FeatureStore, box: Tuple[float, float, float, float]) -> None:
    """Some tile's footprint holds `box` (map units, the store's CRS) whole."""
    assert any(x0 <= box[0] and y0 <= box[1] and box[2] <= x1 and box[3] <= y1
               for x0, y0, x1, y1 in footprints(store)), (box, footprints(store))


def assert_squares_where_they_are(store: FeatureStore, boxes) -> None:
    """Each square's map box (the store's CRS) lies whole in some tile, and that tile as the encoder reads it
    (encoder/raster.py's WindowReader on the recorded source, as the tile pipeline reads it) is bright at the
    box's centre and dark just left of it."""
    geotransform = store.manifest.raster.geotransform
    with WindowReader(store.manifest.raster.path, list(store.manifest.preprocessing.bands)) as reader:
        images = {tile.tile_id: reader.read_tile(tile)[0] for tile in store.grid}
    for box in boxes:
        assert_some_tile_holds(store, box)
        col, row = map_to_pixel(geotransform, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        left, _ = map_to_pixel(geotransform, box[0], box[1])
        checked = 0
        for tile in store.grid:
            c, r, outside = int(col) - tile.col_off, int(row) - tile.row_off, int(left) - 3 - tile.col_off
            if outside >= 0 and c < tile.size and 0 <= r < tile.size:
                image = images[tile.tile_id]
                assert image[:, r, c].min() == tile_server.FOREGROUND, (box, tile.tile_id)
                assert image[:, r, outside].max() == tile_server.BACKGROUND, (box, tile.tile_id)
                checked += 1
        assert checked, f"no tile holds the square {box} with a margin on its left"


# -- XYZ tiles through `quicksam encode` ---------------------------------------------------------------------


def test_xyz_extent_is_encoded_where_the_objects_are_politely(tiles, tmp_path):
    """A service that first answers 429 (Too Many Requests) three times: the encoder retries, keeps to its
    connection bound, and the squares are read where their map coordinates say."""
    tiles.too_many_first = 3
    result = run_cli(*encode_args(tiles.xyz_template, tmp_path / "xyz.qsam", "--zoom", str(SCENE_ZOOM),
                                  extent_arg(XYZ_EXTENT)))
    assert result.returncode == 0, result.stderr
    assert "answered HTTP 429; trying again" in result.stderr
    store = FeatureStore.open(tmp_path / "xyz.qsam")
    raster = store.manifest.raster
    assert raster.path == resolve_source(tiles.xyz_template, SCENE_ZOOM)  # the source, recorded
    assert "zmax=16" in raster.path and raster.crs_name == "EPSG:3857"
    pixel = zoom_pixel_size(SCENE_ZOOM)
    # Geotransforms are compared with a tolerance: GDAL computes them from the tile level in floating point.
    assert raster.geotransform == pytest.approx((-WEB_MERCATOR_HALF, pixel, 0, WEB_MERCATOR_HALF, 0, -pixel))
    assert raster.fingerprint == network_fingerprint(raster.path, raster.width, raster.height, raster.count,
                                                     raster.geotransform)
    assert store.summary()["tiles_done"] == len(store.grid) == 1
    log = tiles.log
    assert log.refused == 3
    assert set(log.per_zoom) == {SCENE_ZOOM}  # full resolution: the finest zoom only
    # Four XYZ tiles per read, at most MAX_CONNECTIONS at once (GDAL_MAX_CONNECTIONS=8 lets 4 through).
    assert 1 <= log.max_in_flight <= MAX_CONNECTIONS
    assert log.agents and all(agent.startswith("QuickSAM/") for agent in log.agents)
    assert_squares_where_they_are(store, [scene_box(c, r, c + s, r + s) for c, r, s in SQUARES])


@pytest.mark.parametrize("kind", ["xyz", "cog"])
def test_a_refusing_server_is_one_line_saying_what_to_do(tiles, tmp_path, kind):
    tiles.refuse_with = 403
    source = ([tiles.xyz_template, "--zoom", str(SCENE_ZOOM), extent_arg(XYZ_EXTENT)] if kind == "xyz"
              else [tiles.url + "/cog.tif", extent_arg(COG_EXTENT)])
    result = run_cli(*encode_args(source[0], tmp_path / "store", *source[1:]))
    assert_one_line_error(result, r"127\.0\.0\.1 refused access \(HTTP 403\): check the URL and any key or "
                                  r"credentials")
    assert not (tmp_path / "store").exists()  # refused before anything was written


def test_a_tile_service_without_extent_is_refused(tiles, tmp_path):
    result = run_cli(*encode_args(tiles.xyz_template, tmp_path / "store", "--zoom", str(SCENE_ZOOM)))
    assert_one_line_error(result, r"serves a web map of 16777216 x 16777216 px.*give the area to encode with "
                                  r"--extent xmin,ymin,xmax,ymax \(in EPSG:3857")
    assert sum(tiles.log.per_zoom.values()) == 0  # nothing was fetched


# -- a COG over HTTP ------------------------------------------------------------------------------------------


def test_cog_over_http_is_encoded_with_range_requests(tiles, tmp_path):
    url = tiles.url + "/cog.tif"
    result = run_cli(*encode_args(url, tmp_path / "cog.qsam", extent_arg(COG_EXTENT)))
    assert result.returncode == 0, result.stderr
    store = FeatureStore.open(tmp_path / "cog.qsam")
    assert store.manifest.raster.path == "/vsicurl/" + url
    assert store.manifest.raster.crs_name == "EPSG:32633"
    assert store.summary()["tiles_done"] == len(store.grid) == 1
    assert_squares_where_they_are(store, [box_at(c, r, c + s, r + s) for c, r, s in tile_server.COG_SQUARES])
    log = tiles.log
    assert log.ranges and all(r.startswith("bytes=") for r in log.ranges)  # HTTP range requests, not the file
    assert log.max_in_flight == 1  # GDAL_HTTP_MULTIRANGE=SERIAL: one range at a time (else GDAL sends several)


# -- in-process: coarse reads, unreachable hosts, extents in degrees ----------------------------------------


def test_a_coarse_read_asks_for_coarser_zoom_tiles_only(tiles):
    source = resolve_source(f"type=xyz&url={tiles.xyz_template}&zmin={tile_server.MIN_ZOOM}&zmax={SCENE_ZOOM}")
    col, row = map_to_pixel((-WEB_MERCATOR_HALF, zoom_pixel_size(SCENE_ZOOM), 0, WEB_MERCATOR_HALF, 0,
                             -zoom_pixel_size(SCENE_ZOOM)), *tile_server.scene_origin())
    window = Window(round(col), round(row), 1024, 1024)
    with open_network(source) as dataset:
        quarter = dataset.read([1, 2, 3], window=window, out_shape=(3, 256, 256))
        eighth = dataset.read([1, 2, 3], window=window, out_shape=(3, 128, 128))
    # Zoom 14 is the service's coarsest: a read 8 x coarser still asks for zoom 14 tiles, never for zoom 13.
    assert set(tiles.log.per_zoom) == {tile_server.MIN_ZOOM}
    assert quarter.max() > 150 and eighth.max() > 150  # the squares, averaged down, are still there


def test_wmts_is_read_through_gdals_wmts_driver_at_the_zoom_chosen(tiles):
    """The server's WMTS capabilities offer the XYZ tiles as tile matrices 14..16: the finest is read at full
    resolution, pixel for pixel the scene; --zoom 1 (GDAL's index: the second tile matrix) reads zoom 15."""
    finest = resolve_source(f"WMTS:{tiles.url}/wmts.xml,layer=scene")
    with open_network(finest) as dataset:
        assert dataset.transform.a == pytest.approx(zoom_pixel_size(SCENE_ZOOM))  # GDAL's arithmetic: a tolerance
        col, row = map_to_pixel(dataset.transform.to_gdal(), *tile_server.scene_origin())
        pixels = dataset.read([1, 2, 3], window=Window(round(col), round(row), 512, 512))
    assert (pixels == tile_server.scene_pixels()[:, :512, :512]).all()
    with open_network(resolve_source(finest, 1)) as dataset:
        assert dataset.transform.a == pytest.approx(zoom_pixel_size(SCENE_ZOOM - 1))
    assert set(tiles.log.per_zoom) == {SCENE_ZOOM}


def test_wms_is_read_over_the_chosen_box_at_the_chosen_resolution(tiles):
    """A QGIS WMS layer's URI over the scene's first 512 x 512 px at zoom 16's pixel size: GDAL's WMS driver asks
    the server's GetMap for exactly those pixels."""
    source = source_from_qgis_uri(f"crs=EPSG:3857&format=image/png&layers=scene&styles=&url={tiles.url}/wms",
                                  bbox=scene_box(0, 0, 512, 512), resolution=zoom_pixel_size(SCENE_ZOOM))
    with open_network(source) as dataset:
        assert (dataset.width, dataset.height) == (512, 512)
        pixels = dataset.read([1, 2, 3])
    assert (pixels == tile_server.scene_pixels()[:, :512, :512]).all()
    assert tiles.log.per_zoom[0] >= 1  # GetMap requests (the server counts them as zoom 0)


def test_an_unreachable_host_is_one_line_saying_what_to_do():
    source = resolve_source("http://127.0.0.1:1/{z}/{x}/{y}.png", 3)
    with open_network(source) as dataset, pytest.raises(RasterError) as raised:
        dataset.read(1, window=Window(0, 0, 256, 256))
    assert str(raised.value).startswith("cannot connect to 127.0.0.1: check the URL and its port")
    assert "\n" not in str(raised.value)


def test_extent_in_degrees_becomes_the_service_crs(tiles):
    source = resolve_source(tiles.xyz_template, SCENE_ZOOM)
    (lon0, lat0), (lon1, lat1) = (tile_server.lonlat_of(*XYZ_EXTENT[:2]), tile_server.lonlat_of(*XYZ_EXTENT[2:]))
    extent = extent_in_raster_crs(source, (lon0, lat0, lon1, lat1), "EPSG:4326")
    # Web Mercator maps a longitude/latitude box to a rectangle; 1 mm allows for PROJ's ellipsoid arithmetic.
    assert extent == pytest.approx(XYZ_EXTENT, abs=1e-3)
    with pytest.raises(RasterError, match="not a CRS GDAL knows; give e.g. EPSG:4326"):
        extent_in_raster_crs(source, (lon0, lat0, lon1, lat1), "EPSG:nonsense")
    assert sum(tiles.log.per_zoom.values()) == 0  # describing the service fetches no tile


# -- the Processing algorithm ---------------------------------------------------------------------------------

ALGORITHM_ID = "quicksam:encoderaster"
SMALL_ENCODE = {"RANDOM_WEIGHTS": True, "TILE_SIZE": 256, "OVERLAP": 32}


@pytest.fixture
def encoder(qgis_processing, plugin, qgis_new_project):
    """quicksam:encoderaster registered; the store settings restored after."""
    from quicksam.ui import settings

    yield plugin
    settings.KNOWN_STORES.reset()
    settings.STORE_FOLDER.reset()


def xyz_layer(server: TileServer):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(f"type=xyz&url={server.xyz_template}&zmin={tile_server.MIN_ZOOM}&zmax={SCENE_ZOOM}",
                           "synthetic tiles", "wms")
    assert layer.isValid()
    return layer


def extent_parameter(extent, crs: str) -> str:
    return f"{extent[0]!r},{extent[2]!r},{extent[1]!r},{extent[3]!r} [{crs}]"


def encoder_args(parameters: dict) -> list:
    """The `quicksam encode` arguments the algorithm builds (checked as Processing checks them; nothing runs)."""
    from qgis.core import QgsApplication, QgsProcessingContext

    algorithm = QgsApplication.processingRegistry().createAlgorithmById(ALGORITHM_ID)
    context = QgsProcessingContext()
    ok, message = algorithm.checkParameterValues(parameters, context)
    assert ok, message
    return algorithm.encoder_job(parameters, context).args


def test_processing_accepts_xyz_wmts_and_cog_layers(encoder, tiles, tmp_path):
    from qgis.core import QgsRasterLayer

    args = encoder_args({"INPUT": xyz_layer(tiles), "EXTENT": extent_parameter(XYZ_EXTENT, "EPSG:3857"),
                         "OUTPUT": str(tmp_path / "xyz.qsam"), **SMALL_ENCODE})
    assert args[1] == resolve_source(f"type=xyz&url={tiles.xyz_template}&zmin=14&zmax=16")
    extent = [float(v) for v in next(a for a in args if a.startswith("--extent=")).split("=", 1)[1].split(",")]
    assert extent == pytest.approx(XYZ_EXTENT)  # already in the layer's CRS, EPSG:3857
    wmts = QgsRasterLayer(f"crs=EPSG:3857&format=image/png&layers=scene&styles=default"
                          f"&tileMatrixSet=GoogleMapsCompatible&url={tiles.url}/wmts.xml", "wmts", "wms")
    assert wmts.isValid()
    args = encoder_args({"INPUT": wmts, "EXTENT": extent_parameter(XYZ_EXTENT, "EPSG:3857"),
                         "OUTPUT": str(tmp_path / "wmts.qsam"), **SMALL_ENCODE})
    assert args[1] == f"WMTS:{tiles.url}/wmts.xml,layer=scene,tilematrixset=GoogleMapsCompatible,style=default"
    cog = QgsRasterLayer(f"/vsicurl/{tiles.url}/cog.tif", "cog", "gdal")
    assert cog.isValid()
    args = encoder_args({"INPUT": cog, "OUTPUT": str(tmp_path / "cog.qsam"), **SMALL_ENCODE})
    assert args[1] == f"/vsicurl/{tiles.url}/cog.tif"


def test_processing_asks_for_an_extent_of_a_world_wide_xyz_layer(encoder, tiles, tmp_path):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    with pytest.raises(QgsProcessingException, match=r"'synthetic tiles' is a web map covering a very large area: "
                                                     r"choose the Extent to encode"):
        processing.run(ALGORITHM_ID, {"INPUT": xyz_layer(tiles), "OUTPUT": str(tmp_path / "store"), **SMALL_ENCODE},
                       feedback=QgsProcessingFeedback())


def test_processing_encodes_an_xyz_layer_into_a_default_store_and_resumes_it(encoder, tiles, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeedback

    from quicksam.ui import settings

    settings.STORE_FOLDER.set_value(str(tmp_path / "stores"))
    parameters = {"INPUT": xyz_layer(tiles), "EXTENT": extent_parameter(XYZ_EXTENT, "EPSG:3857"), **SMALL_ENCODE}
    first = processing.run(ALGORITHM_ID, parameters, feedback=QgsProcessingFeedback())
    assert Path(first["OUTPUT"]) == tmp_path / "stores" / "127.0.0.1-z16.qsam"  # named after the service and zoom
    store = FeatureStore.open(Path(first["OUTPUT"]))
    assert store.manifest.raster.path == resolve_source(f"type=xyz&url={tiles.xyz_template}&zmin=14&zmax=16")
    assert store.summary()["tiles_done"] == 1 and Path(first["TILE_INDEX"]).is_file()
    assert set(tiles.log.per_zoom) == {SCENE_ZOOM}
    second = processing.run(ALGORITHM_ID, parameters, feedback=QgsProcessingFeedback())
    assert second["OUTPUT"] == first["OUTPUT"]  # the same store, resumed (nothing left to do), not a new one
