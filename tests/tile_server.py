"""A local HTTP server on 127.0.0.1 for the online-layer tests: XYZ tiles and a COG with Range support.

It runs in its own process (`TileServer` starts `python tile_server.py`): a server thread inside the test
process could never answer a GDAL call that holds the GIL while it waits for HTTP (rasterio and QGIS make
some), and the test would hang. The test reads what the server saw and sets its behaviour through two private
paths, /_log (JSON) and /_control?key=value, which are not counted.

The XYZ tiles are cut from a synthetic EPSG:3857 scene whose objects are known (`XyzScene`): a block of
`SCENE_TILES` x `SCENE_TILES` tiles at zoom `SCENE_ZOOM` (256 px each) with bright squares at known pixels;
coarser zooms down to `MIN_ZOOM` are the scene averaged 2 x 2 per level (as a tile service renders them).
Tiles outside the block are plain background; zooms outside MIN_ZOOM..SCENE_ZOOM answer 404. The same tiles
are a WMTS layer ("scene", /wmts.xml) and a WMS layer ("scene", GetMap at /wms, EPSG:3857).

The server counts requests per zoom and the largest number of requests in flight at once; it can answer
429 (Too Many Requests) to the first N tile requests, or 403 to every one. Each tile answer waits
`TILE_DELAY` s so that overlapping requests are really in flight together (the concurrency count then shows
what the client does; nothing is timed); so does every COG answer.
"""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit
from urllib.request import ProxyHandler, build_opener

import numpy as np

#: Half the side of the EPSG:3857 world in metres.
WORLD_HALF = 20037508.342789244
SCENE_ZOOM = 16
MIN_ZOOM = 14
#: The scene covers tiles x0..x0+3, y0..y0+3 of SCENE_ZOOM (a multiple of 4, so zooms 15 and 14 align).
SCENE_TILES = 4
SCENE_X0, SCENE_Y0 = 35200, 22000
TILE_PIXELS = 256
BACKGROUND, FOREGROUND = 40, 210
#: Bright squares of the scene as (col_off, row_off, size) in pixels of SCENE_ZOOM, from the block's top-left.
SQUARES = ((150, 160, 70), (260, 250, 80))
TILE_DELAY = 0.02
#: Talks to the server without any proxy the environment names.
_DIRECT = build_opener(ProxyHandler({}))


def zoom_pixel_size(zoom: int) -> float:
    """Metres (EPSG:3857) per pixel of a 256 px XYZ tile at `zoom`."""
    return 2 * WORLD_HALF / (TILE_PIXELS * 2 ** zoom)


def scene_origin() -> Tuple[float, float]:
    """EPSG:3857 (x, y) of the scene's top-left corner."""
    size = zoom_pixel_size(SCENE_ZOOM) * TILE_PIXELS
    return -WORLD_HALF + SCENE_X0 * size, WORLD_HALF - SCENE_Y0 * size


def scene_pixel_to_map(col: float, row: float) -> Tuple[float, float]:
    """EPSG:3857 (x, y) of a continuous pixel position of the scene at SCENE_ZOOM."""
    x0, y0 = scene_origin()
    size = zoom_pixel_size(SCENE_ZOOM)
    return x0 + col * size, y0 - row * size


def scene_box(col0: float, row0: float, col1: float, row1: float) -> Tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) in EPSG:3857 of a pixel rectangle of the scene at SCENE_ZOOM."""
    (x0, y0), (x1, y1) = scene_pixel_to_map(col0, row0), scene_pixel_to_map(col1, row1)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def scene_pixels() -> np.ndarray:
    """(3, 1024, 1024) uint8: the scene at SCENE_ZOOM, bright squares (`SQUARES`) on a dark background."""
    side = SCENE_TILES * TILE_PIXELS
    data = np.full((3, side, side), BACKGROUND, dtype=np.uint8)
    for col, row, size in SQUARES:
        data[:, row:row + size, col:col + size] = FOREGROUND
    return data


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG file (8-bit RGB, no filter) of a (3, height, width) uint8 array."""
    _, height, width = rgb.shape
    rows = np.ascontiguousarray(np.transpose(rgb, (1, 2, 0))).reshape(height, width * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def render_tiles() -> Dict[Tuple[int, int, int], bytes]:
    """{(z, x, y): PNG bytes} of the scene's tiles at MIN_ZOOM..SCENE_ZOOM (coarser zooms averaged 2 x 2)."""
    tiles: Dict[Tuple[int, int, int], bytes] = {}
    image = scene_pixels().astype(np.float64)
    for zoom in range(SCENE_ZOOM, MIN_ZOOM - 1, -1):
        shift = SCENE_ZOOM - zoom
        count = image.shape[1] // TILE_PIXELS
        pixels = np.round(image).astype(np.uint8)
        for ty in range(count):
            for tx in range(count):
                block = pixels[:, ty * TILE_PIXELS:(ty + 1) * TILE_PIXELS, tx * TILE_PIXELS:(tx + 1) * TILE_PIXELS]
                tiles[(zoom, (SCENE_X0 >> shift) + tx, (SCENE_Y0 >> shift) + ty)] = png_bytes(block)
        bands, height, width = image.shape
        image = image.reshape(bands, height // 2, 2, width // 2, 2).mean(axis=(2, 4))
    return tiles


@dataclass
class ServerLog:
    """What the server saw: tile requests per zoom, every request path, Range headers, user agents, the most
    requests in flight at once, and how many it refused."""

    per_zoom: Counter = field(default_factory=Counter)
    paths: List[str] = field(default_factory=list)
    ranges: List[str] = field(default_factory=list)
    agents: List[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    refused: int = 0

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "per_zoom": {str(k): v for k, v in self.per_zoom.items()}})

    @classmethod
    def from_json(cls, text: str) -> ServerLog:
        fields = json.loads(text)
        fields["per_zoom"] = Counter({int(k): v for k, v in fields["per_zoom"].items()})
        return cls(**fields)


class TileServer:
    """The server process, seen from the test; `url` is http://127.0.0.1:PORT. Stop it with `close()`.

    `log` is what it saw since `reset_log()`. Setting `too_many_first` makes it answer 429 (with Retry-After: 0)
    to that many requests before serving them; setting `refuse_with` (e.g. 403) answers every request with that
    status (None: serve). `cog` is served at /cog.tif with HTTP Range support (206 answers), as /vsicurl/ needs.
    """

    def __init__(self, cog: Optional[Path] = None) -> None:
        command = [sys.executable, str(Path(__file__).resolve())] + ([str(cog)] if cog is not None else [])
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.url = self._process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self._process.kill()
            raise RuntimeError(f"the tile server did not start (it said {self.url!r})")

    @property
    def xyz_template(self) -> str:
        """The tiles' URL in QGIS's XYZ form."""
        return self.url + "/xyz/{z}/{x}/{y}.png"

    @property
    def log(self) -> ServerLog:
        with _DIRECT.open(self.url + "/_log", timeout=10) as answer:
            return ServerLog.from_json(answer.read().decode())

    def reset_log(self) -> None:
        self._control(reset="1")

    @property
    def too_many_first(self) -> int:
        raise AttributeError("write-only")

    @too_many_first.setter
    def too_many_first(self, count: int) -> None:
        self._control(too_many_first=str(count))

    @property
    def refuse_with(self) -> Optional[int]:
        raise AttributeError("write-only")

    @refuse_with.setter
    def refuse_with(self, status: Optional[int]) -> None:
        self._control(refuse_with=str(status or 0))

    def _control(self, **values: str) -> None:
        query = "&".join(f"{key}={value}" for key, value in values.items())
        with _DIRECT.open(f"{self.url}/_control?{query}", timeout=10) as answer:
            answer.read()

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._process.stdout.close()


class _State:
    """The server process's side: tiles, the COG, the log and the behaviour, shared by the handler threads."""

    def __init__(self, cog: Optional[Path]) -> None:
        self.tiles = render_tiles()
        self.background = png_bytes(np.full((3, TILE_PIXELS, TILE_PIXELS), BACKGROUND, dtype=np.uint8))
        self.cog = cog.read_bytes() if cog is not None else b""
        self.log = ServerLog()
        self.too_many_first = 0
        self.refuse_with = 0
        self.lock = threading.Lock()

    def control(self, values: Dict[str, str]) -> None:
        with self.lock:
            if values.get("reset"):
                self.log = ServerLog()
            self.too_many_first = int(values.get("too_many_first", self.too_many_first))
            self.refuse_with = int(values.get("refuse_with", self.refuse_with))

    def enter(self, path: str, agent: str) -> None:
        with self.lock:
            self.log.paths.append(path)
            if agent not in self.log.agents:
                self.log.agents.append(agent)
            self.log.in_flight += 1
            self.log.max_in_flight = max(self.log.max_in_flight, self.log.in_flight)

    def leave(self) -> None:
        with self.lock:
            self.log.in_flight -= 1

    def refusal(self) -> Optional[int]:
        """The status of a refused request (403, 429...), or None to serve it."""
        with self.lock:
            if self.refuse_with:
                self.log.refused += 1
                return self.refuse_with
            if self.too_many_first > 0:
                self.too_many_first -= 1
                self.log.refused += 1
                return 429
        return None

    def get_map(self, query: Dict[str, str]) -> Tuple[int, bytes]:
        """A WMS 1.1.1 GetMap of layer "scene" in EPSG:3857: the scene sampled (nearest pixel centre) at the asked
        BBOX, WIDTH and HEIGHT; background outside it. 400 for anything else."""
        query = {key.upper(): value for key, value in query.items()}
        if query.get("REQUEST") != "GetMap" or query.get("LAYERS") != "scene" or query.get("SRS") != "EPSG:3857":
            return 400, b"unsupported request"
        x0, y0, x1, y1 = (float(v) for v in query["BBOX"].split(","))
        width, height = int(query["WIDTH"]), int(query["HEIGHT"])
        with self.lock:
            self.log.per_zoom[0] += 1  # zoom 0 counts GetMap requests
        origin_x, origin_y = scene_origin()
        size = zoom_pixel_size(SCENE_ZOOM)
        cols = np.floor((x0 + (np.arange(width) + 0.5) * (x1 - x0) / width - origin_x) / size).astype(int)
        rows = np.floor((origin_y - (y1 - (np.arange(height) + 0.5) * (y1 - y0) / height)) / size).astype(int)
        scene = scene_pixels()
        image = np.full((3, height, width), BACKGROUND, dtype=np.uint8)
        inside_c, inside_r = (cols >= 0) & (cols < scene.shape[2]), (rows >= 0) & (rows < scene.shape[1])
        bands = np.arange(3)
        image[np.ix_(bands, np.flatnonzero(inside_r), np.flatnonzero(inside_c))] = \
            scene[np.ix_(bands, rows[inside_r], cols[inside_c])]
        return 200, png_bytes(image)

    def tile_answer(self, z: int, x: int, y: int) -> Tuple[int, bytes]:
        """(HTTP status, body) of a tile request that is not refused."""
        with self.lock:
            self.log.per_zoom[z] += 1
        if not MIN_ZOOM <= z <= SCENE_ZOOM or not (0 <= x < 2 ** z and 0 <= y < 2 ** z):
            return 404, b"no such tile"
        return 200, self.tiles.get((z, x, y), self.background)


_TILE_PATH = re.compile(r"^/xyz/(\d+)/(\d+)/(\d+)\.png$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _handler_for(server: _State) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # quiet: the tests read ServerLog instead

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self._answer(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            path = urlsplit(self.path).path
            if path == "/_log":
                with server.lock:
                    self._send(200, server.log.to_json().encode(), "application/json", head)
                return
            if path == "/_control":
                server.control(dict(parse_qsl(urlsplit(self.path).query)))
                self._send(200, b"ok", "text/plain", head)
                return
            server.enter(self.path, self.headers.get("User-Agent", ""))
            try:
                self._serve(path, head)
            finally:
                server.leave()

        def _serve(self, path: str, head: bool) -> None:
            tile = _TILE_PATH.match(path)
            threading.Event().wait(TILE_DELAY)
            refused = server.refusal()
            if refused is not None:
                self._send(refused, b"refused", "text/plain", head)
            elif tile:
                status, body = server.tile_answer(*map(int, tile.groups()))
                self._send(status, body, "image/png" if status == 200 else "text/plain", head)
            elif path == "/cog.tif" and server.cog:
                self._send_range(server.cog, head)
            elif path == "/wms":
                status, body = server.get_map(dict(parse_qsl(urlsplit(self.path).query)))
                self._send(status, body, "image/png" if status == 200 else "text/plain", head)
            elif path == "/wmts.xml":
                host = self.headers.get("Host", "127.0.0.1")
                self._send(200, wmts_capabilities(f"http://{host}").encode(), "application/xml", head)
            else:
                self._send(404, b"not found", "text/plain", head)

        def _send(self, status: int, body: bytes, kind: str, head: bool, extra: Optional[dict] = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            if status == 429:
                self.send_header("Retry-After", "0")
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _send_range(self, data: bytes, head: bool) -> None:
            wanted = self.headers.get("Range")
            if wanted is None:
                self._send(200, data, "image/tiff", head, {"Accept-Ranges": "bytes"})
                return
            with server.lock:
                server.log.ranges.append(wanted)
            match = _RANGE.match(wanted.strip())
            if match is None:
                self._send(416, b"one range only", "text/plain", head)
                return
            start = int(match.group(1))
            end = min(len(data) - 1, int(match.group(2))) if match.group(2) else len(data) - 1
            headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            self._send(206, data[start:end + 1], "image/tiff", head, headers)

    return Handler


def wmts_capabilities(url: str) -> str:
    """A WMTS 1.0.0 capabilities document: layer "scene", the XYZ tiles at zooms MIN_ZOOM..SCENE_ZOOM as the
    tile matrices "14".."16" of a GoogleMapsCompatible set (RESTful URLs)."""
    matrices = "".join(
        f"<TileMatrix><ows:Identifier>{z}</ows:Identifier>"
        f"<ScaleDenominator>{559082264.0287178 / 2 ** z!r}</ScaleDenominator>"
        f"<TopLeftCorner>{-WORLD_HALF!r} {WORLD_HALF!r}</TopLeftCorner>"
        f"<TileWidth>{TILE_PIXELS}</TileWidth><TileHeight>{TILE_PIXELS}</TileHeight>"
        f"<MatrixWidth>{2 ** z}</MatrixWidth><MatrixHeight>{2 ** z}</MatrixHeight></TileMatrix>"
        for z in range(MIN_ZOOM, SCENE_ZOOM + 1))
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
            'version="1.0.0"><Contents><Layer><ows:Identifier>scene</ows:Identifier>'
            "<ows:WGS84BoundingBox><ows:LowerCorner>-180 -85.0511287798</ows:LowerCorner>"
            "<ows:UpperCorner>180 85.0511287798</ows:UpperCorner></ows:WGS84BoundingBox>"
            '<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style><Format>image/png</Format>'
            "<TileMatrixSetLink><TileMatrixSet>GoogleMapsCompatible</TileMatrixSet></TileMatrixSetLink>"
            f'<ResourceURL format="image/png" resourceType="tile" '
            f'template="{url}/xyz/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"/></Layer>'
            "<TileMatrixSet><ows:Identifier>GoogleMapsCompatible</ows:Identifier>"
            "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>"
            f"{matrices}</TileMatrixSet></Contents></Capabilities>")


def serve(cog: Optional[Path]) -> None:
    """Serve until terminated; the first stdout line is the server's URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(_State(cog)))
    httpd.daemon_threads = True
    print(f"http://127.0.0.1:{httpd.server_address[1]}", flush=True)  # noqa: T201 - read by TileServer
    httpd.serve_forever()


#: The COG's scene (`cog_scene()`, 1536 x 768 px in EPSG:32633 under synthetic.default_transform()): its bright
#: squares as (col_off, row_off, size) in pixels.
COG_WIDTH, COG_HEIGHT = 1536, 768
COG_SQUARES = ((400, 150, 70), (510, 240, 90))


def cog_scene() -> np.ndarray:
    """(3, 768, 1536) uint8: bright squares (`COG_SQUARES`) on a dark background."""
    data = np.full((3, COG_HEIGHT, COG_WIDTH), BACKGROUND, dtype=np.uint8)
    for col, row, size in COG_SQUARES:
        data[:, row:row + size, col:col + size] = FOREGROUND
    return data


def build_cog(folder: Path) -> Path:
    """A tiled GeoTIFF of `cog_scene()` with internal overviews, as /vsicurl/ reads a COG: 256 px blocks, bands
    stored one after the other and uncompressed, so that a window read needs several byte ranges (which GDAL
    would fetch in parallel unless told otherwise)."""
    import rasterio
    from rasterio.enums import Resampling
    from synthetic import CRS, default_transform

    path = folder / "cog.tif"
    data = cog_scene()
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3, dtype="uint8",
                       crs=CRS, transform=default_transform(), tiled=True, blockxsize=256, blockysize=256,
                       interleave="band", compress="none") as dst:
        dst.write(data)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2], Resampling.average)
    return path


def lonlat_of(x: float, y: float) -> Tuple[float, float]:
    """(longitude, latitude) in degrees of an EPSG:3857 point (spherical Mercator)."""
    lon = math.degrees(x / 6378137.0)
    lat = math.degrees(2 * math.atan(math.exp(y / 6378137.0)) - math.pi / 2)
    return lon, lat


if __name__ == "__main__":
    serve(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
