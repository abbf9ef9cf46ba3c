"""Online sources without a network (issue 11): what a user may type or a QGIS layer holds, the canonical source
recorded in the store, the GDAL description the encoder opens, the fingerprint rule and the one-line messages
for what servers answer. The live reads are in test_online_layers.py."""

from __future__ import annotations

import re

import pytest

from quicksam.core.errors import RasterError
from quicksam.encoder.network_reads import network_error, network_options
from quicksam.encoder.online_sources import (
    gdal_dataset,
    network_fingerprint,
    require_extent,
    resolve_source,
    source_host,
    source_kind,
    source_pixel_size,
    source_stem,
)
from quicksam.encoder.qgis_uris import source_from_qgis_uri

TEMPLATE = "https://tiles.example.org/ortho/{z}/{x}/{y}.jpg?key=a&b=c"


def test_an_xyz_template_needs_a_zoom_and_is_recorded_as_qgis_writes_xyz_layers():
    with pytest.raises(RasterError, match=r"XYZ tile template: choose the zoom level to read with --zoom Z"):
        resolve_source(TEMPLATE)
    source = resolve_source(TEMPLATE, 17)
    assert source == ("type=xyz&url=https://tiles.example.org/ortho/%7Bz%7D/%7Bx%7D/%7By%7D.jpg%3Fkey%3Da%26b%3Dc"
                      "&zmin=0&zmax=17")
    assert resolve_source(source) == source  # the recorded source is itself a valid input
    assert source_kind(source) == "xyz" and source_host(source) == "tiles.example.org"
    assert source_stem(source) == "tiles.example.org-z17"


def test_a_qgis_xyz_layer_is_read_at_its_zmax_or_a_zoom_it_serves():
    uri = f"type=xyz&url={TEMPLATE.replace('&', '%26')}&zmin=5&zmax=19&tilePixelRatio=2&referer=https://me.org"
    source = resolve_source(uri)
    assert "zmin=5&zmax=19" in source and "tilePixelRatio=2" in source
    assert "zmax=12" in resolve_source(uri, 12)
    with pytest.raises(RasterError, match=r"zoom 20 is outside the zoom levels the service serves \(5\.\.19\)"):
        resolve_source(uri, 20)
    xml = gdal_dataset(source)
    # 512 px tiles, zoom 19 at full resolution, one overview per zoom down to 5, the query string escaped.
    for part in ("<BlockSizeX>512</BlockSizeX>", "<TileLevel>19</TileLevel>", "<OverviewCount>14</OverviewCount>",
                 "/${z}/${x}/${y}.jpg?key=a&amp;b=c</ServerUrl>", "<Referer>https://me.org</Referer>",
                 "<YOrigin>top</YOrigin>", "<Projection>EPSG:3857</Projection>"):
        assert part in xml
    assert source_pixel_size(source) == pytest.approx(40075016.68557849 / (512 * 2 ** 19))


def test_tms_rows_counted_from_the_south_and_unknown_placeholders():
    assert "<YOrigin>bottom</YOrigin>" in gdal_dataset(resolve_source("https://t.org/{z}/{x}/{-y}.png", 3))
    with pytest.raises(RasterError, match=r"placeholder \{q\}, which QuickSAM cannot fill"):
        resolve_source("https://t.org/{q}.png?z={z}&x={x}&y={y}", 3)
    with pytest.raises(RasterError, match="at most 22"):
        resolve_source("https://t.org/{z}/{x}/{y}.png", 23)


def test_layers_with_credentials_are_refused_saying_what_to_do():
    with pytest.raises(RasterError, match=r"QGIS authentication configuration.*Save As"):
        resolve_source("type=xyz&url=https://t.org/{z}/{x}/{y}.png&zmax=5&authcfg=abc1234")


@pytest.mark.parametrize(("given", "expected"), [
    ("https://data.example.org/cogs/scene.tif", "/vsicurl/https://data.example.org/cogs/scene.tif"),
    ("/vsicurl/https://data.example.org/cogs/scene.tif", "/vsicurl/https://data.example.org/cogs/scene.tif"),
    ("/vsis3/bucket/scene.tif", "/vsis3/bucket/scene.tif"),
    ("/data/scene.tif", "/data/scene.tif"),
])
def test_raster_files_keep_gdal_paths(given, expected):
    assert resolve_source(given) == expected
    assert gdal_dataset(expected) == expected


def test_zoom_applies_to_tile_services_only():
    with pytest.raises(RasterError, match=r"--zoom applies to tile services only.*leave --zoom out"):
        resolve_source("/data/scene.tif", 3)
    wmts = resolve_source("WMTS:https://w.org/WMTSCapabilities.xml,layer=ortho,zoom_level=18", 15)
    assert wmts == "WMTS:https://w.org/WMTSCapabilities.xml,layer=ortho,zoom_level=15"


def test_qgis_wmts_layer_becomes_gdal_wmts():
    uri = ("contextualWMSLegend=0&crs=EPSG:3857&dpiMode=7&featureCount=10&format=image/jpeg&layers=ortho"
           "&styles=default&tileMatrixSet=GoogleMapsCompatible&url=https://w.org/wmts")
    assert resolve_source(uri) == ("WMTS:https://w.org/wmts?SERVICE=WMTS&REQUEST=GetCapabilities,layer=ortho,"
                                   "tilematrixset=GoogleMapsCompatible,style=default")
    assert source_stem(resolve_source(uri)) == "w.org-ortho"


def test_wms_needs_a_pixel_size_and_opens_in_gdal_without_a_request():
    with pytest.raises(RasterError, match=r"add &MINRESOLUTION=<map units per pixel>"):
        resolve_source("WMS:https://m.org/wms?LAYERS=ortho&SRS=EPSG:25832&BBOX=0,0,1000,500")
    uri = "crs=EPSG:25832&format=image/png&layers=roads&layers=ortho&styles=&styles=&url=https://m.org/wms?map=x"
    with pytest.raises(RasterError, match=r"give a WMS layer as GDAL's WMS: URL with its BBOX and MINRESOLUTION"):
        resolve_source(uri)  # the CLI: no resolution to read it at
    with pytest.raises(RasterError, match=r"a WMS layer has no pixel size of its own"):
        source_from_qgis_uri(uri, bbox=(0, 0, 1000, 500))
    source = source_from_qgis_uri(uri, bbox=(500000, 5700000, 501000, 5700500), resolution=0.5)
    assert resolve_source(source) == source
    assert source.startswith("WMS:https://m.org/wms?map=x&SERVICE=WMS&VERSION=1.1.1&REQUEST=GetMap&LAYERS=roads,ortho")
    assert source_pixel_size(source) == 0.5
    import rasterio

    with rasterio.open(gdal_dataset(source)) as dataset:  # GDAL builds the GetMap description: no request yet
        assert (dataset.width, dataset.height) == (2000, 1000)
        assert dataset.transform.a == pytest.approx(0.5)
        assert dataset.crs.to_epsg() == 25832


def test_network_fingerprint_hashes_the_description_and_structure_only():
    source = resolve_source(TEMPLATE, 17)
    geotransform = (-20037508.342789244, 0.29858214173896974, 0.0, 20037508.342789244, 0.0, -0.29858214173896974)
    first = network_fingerprint(source, 2 ** 25, 2 ** 25, 4, geotransform)
    assert first == network_fingerprint(source, 2 ** 25, 2 ** 25, 4, geotransform)
    assert first != network_fingerprint(resolve_source(TEMPLATE.replace("ortho", "roads"), 17), 2 ** 25, 2 ** 25, 4,
                                        geotransform)
    assert first != network_fingerprint(source, 2 ** 25, 2 ** 25, 3, geotransform)
    assert first != network_fingerprint(resolve_source(TEMPLATE, 16), 2 ** 25, 2 ** 25, 4, geotransform)


#: What GDAL says (as the encoder sees it, causes joined by " | ") for each kind of failure.
WMS_429 = ("Read failed. | GDAL_WMS>, band 1: IReadBlock failed at X offset 1, Y offset 2: GDALWMS: Unable to "
           "download block 1, 2. URL: slow down HTTP status code: 429, error: slow down.")


@pytest.mark.parametrize(("text", "expected"), [
    (WMS_429, r"^t\.org asks to slow down \(HTTP 429\) and still refused after 4 retries: try again later "
              r"\(finished tiles are kept: the same command resumes\), or encode a smaller extent or a lower zoom$"),
    ("HTTP response code: 403 | HTTP response code: 403", r"^t\.org refused access \(HTTP 403\): check the URL"),
    ("HTTP response code: 401", r"^t\.org refused access \(HTTP 401\)"),
    (WMS_429.replace("429", "404"), r"^t\.org has no such data \(HTTP 404\): check the URL, and that the service "
                                    r"has tiles at this zoom over this extent \(choose a lower zoom\)$"),
    (WMS_429.replace("429", "503"), r"^t\.org failed \(HTTP 503\) after 4 retries: try again later"),
    ("CURL error: Could not resolve host: t.org", r"^cannot find the host t\.org: check the URL and your network"),
    ("URL: Failed to connect to t.org port 80 after 0 ms: Could not connect to server HTTP status code: 0",
     r"^cannot connect to t\.org: check the URL and its port"),
    ("Operation timed out after 60001 milliseconds", r"^t\.org did not answer in time: try again later"),
    ("something new | TIFFReadEncodedTile() failed.", r"^reading from t\.org failed \(TIFFReadEncodedTile\(\) "
                                                      r"failed\.\): check the URL"),
])
def test_each_failure_is_one_line_naming_the_host_and_what_to_do(text, expected):
    message = str(network_error(resolve_source("https://t.org/{z}/{x}/{y}.png", 3), text, 4))
    assert "\n" not in message
    assert re.search(expected, message), message


def test_network_settings_from_the_environment_win(monkeypatch):
    monkeypatch.delenv("GDAL_MAX_CONNECTIONS", raising=False)
    assert network_options()["GDAL_MAX_CONNECTIONS"] == "2"
    assert network_options()["GDAL_HTTP_MULTIRANGE"] == "SERIAL"
    assert network_options()["GDAL_HTTP_USERAGENT"].startswith("QuickSAM/")
    monkeypatch.setenv("GDAL_MAX_CONNECTIONS", "1")
    assert network_options()["GDAL_MAX_CONNECTIONS"] == "1"


def test_a_gdal_service_description_file_is_a_tile_service(tmp_path):
    """QGIS opens a `<GDAL_WMS>` .xml file with its 'gdal' provider: the encoder treats it as the web service
    it describes (network settings, an extent required, the host in messages)."""
    description = tmp_path / "osm.xml"
    description.write_text(gdal_dataset(resolve_source("https://tile.example.org/{z}/{x}/{y}.png", 12)))
    source = resolve_source(str(description))
    assert source_kind(source) == "service-file" and source_host(source) == "tile.example.org"
    with pytest.raises(RasterError, match=r"tile\.example\.org serves a web map .* give the area to encode"):
        require_extent(source, (2 ** 20, 2 ** 20), "EPSG:3857", None)
    moved = tmp_path / "moved.xml"
    moved.write_text(description.read_text())
    assert network_fingerprint(source, 1, 1, 4, (0, 1, 0, 0, 0, -1)) == network_fingerprint(
        str(moved), 1, 1, 4, (0, 1, 0, 0, 0, -1))  # the description is hashed, not where it lies
    (tmp_path / "plain.xml").write_text("<VRTDataset/>")
    assert source_kind(str(tmp_path / "plain.xml")) == "file"
