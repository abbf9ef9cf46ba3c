"""A feature store on an object store (docs/scaling.md): `quicksam encode RASTER s3://...` against a real S3 server
(moto's, started on 127.0.0.1 for this module), `quicksam pull`, `quicksam info URL`, a resumed interrupted run and
the one-line errors. The CLI runs in subprocesses pointed at the server by AWS_ENDPOINT_URL (botocore 1.31+ reads
it; s3fs passes it through)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pytest
from synthetic import MODEL, assert_one_line_error, cli_command, pixel_to_map_default, square_scene, write_raster

pytest.importorskip("s3fs", reason="s3fs (requirements.txt) is needed to test stores on S3")
pytest.importorskip("moto", reason="moto[server] (requirements.txt) is needed to run an S3 server for the tests")

BUCKET = "quicksam-test"
#: 128 px tiles with a 32 px overlap: small tiles, fast on a CPU (docs: sizes below 1024 are for tests).
TILE_OPTIONS = ["--random-weights", "--model", MODEL, "--tile-size", "128", "--overlap", "32"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(port: int, server: subprocess.Popen) -> None:
    for _ in range(300):   # up to 30 s for the server to listen (not an assertion on time: a start-up wait)
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start listening")


@pytest.fixture(scope="module")
def s3() -> Iterator[Dict[str, str]]:
    """A real S3 server (moto) on a free port with a versioned bucket; yields the environment for the CLI."""
    import boto3

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port, server)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        # versions count the PUTs of a key: a tile rewritten on resume would have two
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def _client(env: Dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                        aws_secret_access_key="test", region_name="us-east-1")


def _objects(env: Dict[str, str], prefix: str) -> Dict[str, dict]:
    """{key below `prefix`: {"etag", "versions"}} of the bucket (every version listed)."""
    found: Dict[str, dict] = {}
    pages = _client(env).get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    for page in pages:
        for version in page.get("Versions", []):
            key = version["Key"][len(prefix) + 1:]
            entry = found.setdefault(key, {"versions": 0, "etag": None})
            entry["versions"] += 1
            if version["IsLatest"]:
                entry["etag"] = version["ETag"]
    return found


def _log(env: Dict[str, str], prefix: str) -> List[dict]:
    body = _client(env).get_object(Bucket=BUCKET, Key=f"{prefix}/tiles.jsonl")["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def _run(args: List[object], env: Dict[str, str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh process against the S3 server; its user cache (the working copies) in tmp_path."""
    full_env = {**os.environ, **env, "QUICKSAM_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture(scope="module")
def raster(tmp_path_factory) -> Path:
    """A 300 x 260 px scene: 3 x 3 tiles of 128 px."""
    folder = tmp_path_factory.mktemp("scene")
    return write_raster(folder / "scene.tif", square_scene(300, 260, (50, 60, 80)))


@pytest.fixture(scope="module")
def encoded(s3, raster, tmp_path_factory) -> Dict[str, object]:
    """The scene encoded into the bucket and, for reference, into a local folder, each by `quicksam encode` in its
    own process (two CLI runs for the module: each takes a model build)."""
    folder = tmp_path_factory.mktemp("encoded")
    url = f"s3://{BUCKET}/a/scene.qsam"
    result = _run(["encode", raster, url, *TILE_OPTIONS], s3, folder)
    assert result.returncode == 0, result.stderr
    local = _run(["encode", raster, folder / "local.qsam", *TILE_OPTIONS], s3, folder)
    assert local.returncode == 0, local.stderr
    return {"url": url, "stdout": result.stdout, "local": folder / "local.qsam"}


def assert_same_features(pulled: Path, local: Path):
    """The pulled store passes the CRC-32 check, is complete, logs the local store's tiles with the same statuses,
    and its features equal the local store's within one float16 step (rtol 2e-3: the same model and input in the
    same kind of process; never compared bitwise). Returns it open."""
    from quicksam.core.store import FeatureStore

    store, reference = FeatureStore.open(pulled), FeatureStore.open(local)
    assert store.verify_tiles() == {} and store.summary()["complete"]
    assert {t: r.status for t, r in store.records().items()} == {t: r.status for t, r in reference.records().items()}
    for tile in reference.grid:
        ours, theirs = store.load_tile(tile.tile_id), reference.load_tile(tile.tile_id)
        for name in theirs:
            np.testing.assert_allclose(np.asarray(ours[name], np.float32), np.asarray(theirs[name], np.float32),
                                       rtol=2e-3, atol=1e-3)
    return store


def test_an_encode_into_s3_writes_every_tile_and_pulls_into_the_local_encodes_store(s3, encoded, tmp_path):
    """Every tile object and control file reaches the bucket; the pulled store's features equal a local encode's
    (the same model and input in the same kind of process: nearly exact; compared within one float16 step,
    rtol 2e-3, never bitwise); the pulled tiles pass the CRC-32 check and the engine decodes them."""
    from quicksam.core.store import FeatureStore
    from quicksam.interactive.engine import MapPrompts, SegmentEngine

    url, stdout = encoded["url"], encoded["stdout"]
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["store"] == url and summary["complete"] and summary["tiles_done"] == 9
    objects = _objects(s3, "a/scene.qsam")
    assert {"manifest.json", "tiles.jsonl", "decoder.onnx", "tile_index.gpkg"} <= set(objects)
    reference = FeatureStore.open(encoded["local"])
    assert {f"tiles/{tile.tile_id}.npy" for tile in reference.grid} <= set(objects)
    assert ".quicksam.lock" not in objects and not any(key.endswith(".tmp") for key in objects)

    pulled = _run(["pull", url, tmp_path / "pulled"], s3, tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    store = assert_same_features(tmp_path / "pulled", encoded["local"])
    segments = SegmentEngine(store).segment(MapPrompts(points=(pixel_to_map_default(90, 100),), labels=(1,)))
    assert isinstance(segments, list)
    info = _run(["info", url], s3, tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["complete"] and json.loads(info.stdout)["store"] == url


def test_a_pull_again_keeps_the_tiles_it_has_and_refuses_another_folder(s3, encoded, tmp_path):
    """A second pull downloads no tile already there at the right size; a folder of other files is refused."""
    url = encoded["url"]
    assert _run(["pull", url, tmp_path / "pulled"], s3, tmp_path).returncode == 0
    first = sorted((tmp_path / "pulled" / "tiles").glob("*.npy"))[0]
    first.unlink()
    again = _run(["pull", url, tmp_path / "pulled", "--progress-json"], s3, tmp_path)
    finished = [json.loads(line) for line in again.stdout.splitlines() if '"finished"' in line][-1]
    assert (finished["tiles_downloaded"], finished["tiles_kept"]) == (1, 8) and first.is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert_one_line_error(_run(["pull", url, tmp_path / "other"], s3, tmp_path), "not an earlier pull")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_an_interrupted_encode_into_s3_lists_only_written_tiles_and_resumes_without_rewriting(s3, tmp_path):
    """SIGINT after the first progress events: exit 130, the bucket's log lists only tiles whose objects exist
    (and at least those the events reported); the same command resumes and completes, each tile object PUT
    once (one version per key in the versioned bucket)."""
    raster = write_raster(tmp_path / "big.tif", square_scene(600, 500, (200, 150, 160)))  # 6 x 5 tiles
    url = f"s3://{BUCKET}/c/scene.qsam"
    command = cli_command("encode", raster, url, *TILE_OPTIONS, "--progress-json")
    env = {**os.environ, **s3, "QUICKSAM_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    reported = []
    for line in process.stdout:
        event = json.loads(line)
        if event.get("event") == "progress":
            reported.append(event["tile"])
            if len(reported) == 3:
                process.send_signal(signal.SIGINT)
                break
    process.stdout.read()
    assert process.wait(timeout=120) == 130, process.stderr.read()
    before = _objects(s3, "c/scene.qsam")
    logged = {record["tile_id"] for record in _log(s3, "c/scene.qsam")}
    assert set(reported) <= logged and len(logged) < 30
    assert all(f"tiles/{tile_id}.npy" in before for tile_id in logged)

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = _objects(s3, "c/scene.qsam")
    assert len({record["tile_id"] for record in _log(s3, "c/scene.qsam")}) == 30
    tiles_after = {key: entry for key, entry in after.items() if key.startswith("tiles/")}
    assert len([key for key in tiles_after if key.endswith(".npy") and ".valid" not in key]) == 30
    for key, entry in tiles_after.items():
        assert entry["versions"] == 1, key   # written once: the resume did not PUT it again
        if key in before:
            assert entry["etag"] == before[key]["etag"]


def test_stores_on_urls_fail_in_one_line(s3, raster, encoded, tmp_path):
    """A protocol nobody knows, a missing protocol package (s3fs blocked), a missing bucket, a store that is not
    there, a store made with other settings (named by its URL), an endpoint that does not answer: one line each,
    saying what to do; nothing written locally."""
    assert_one_line_error(_run(["encode", raster, "foo://b/s.qsam", *TILE_OPTIONS], s3, tmp_path),
                          "no installed file system knows the protocol 'foo://'")
    blocked = [sys.executable, "-c", "import sys; sys.modules['s3fs'] = None; from quicksam.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "encode", str(raster), f"s3://{BUCKET}/d.qsam", *TILE_OPTIONS]
    result = subprocess.run(blocked, capture_output=True, text=True, timeout=120, env={**os.environ, **s3})
    assert_one_line_error(result, "pip install s3fs")
    assert_one_line_error(_run(["encode", raster, "s3://no-such-bucket/s.qsam", *TILE_OPTIONS], s3, tmp_path),
                          "bucket 'no-such-bucket' .* does not exist")
    assert_one_line_error(_run(["pull", f"s3://{BUCKET}/nothing.qsam", tmp_path / "p"], s3, tmp_path),
                          "holds no QuickSAM feature store")
    assert not (tmp_path / "p").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert_one_line_error(_run(["encode", raster, encoded["url"], *TILE_OPTIONS, "--work-dir", tmp_path / "mine"], s3,
                               tmp_path), "not a QuickSAM working copy; give an empty or new working folder")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    other = [option if option != "32" else "16" for option in TILE_OPTIONS]   # --overlap 16
    assert_one_line_error(_run(["encode", raster, encoded["url"], *other], s3, tmp_path),
                          f"'{encoded['url']}' already holds a store made differently")
    unreachable = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    assert_one_line_error(_run(["info", f"s3://{BUCKET}/a.qsam"], unreachable, tmp_path), "check the URL, the endpoint")


def test_the_remote_writer_gives_the_local_writers_records_and_a_bound_store_checks_objects(tmp_path):
    """RemoteTileWriter (memory://, in this process) writes one object per file and returns TileWriter's record
    (CRC-32 of the same bytes); it pickles. A working copy bound to the URL finds a missing or short tile object
    damaged without any local tile file, and finds intact ones intact."""
    import fsspec

    from quicksam.core.manifest import feature_layout
    from quicksam.core.remote_store import RemoteTileWriter, bound_to_url, remote_tile_check
    from quicksam.core.tile_log import TileRecord
    from quicksam.core.tile_writer import TileWriter
    from quicksam.core.tiling import TileGrid

    tile = TileGrid.build(100, 90, 64, 16).tiles[-1]   # an edge tile: padding invalid
    layout = tuple(feature_layout([("a", (2, 4, 4)), ("b", (1, 8, 8))]))
    features = {"a": np.arange(32, dtype=np.float32).reshape(2, 4, 4) / 7, "b": np.ones((1, 8, 8), np.float32)}
    valid = np.ones((64, 64), bool)
    valid[:5, :5] = False
    (tmp_path / "tiles").mkdir()
    url = f"memory://quicksam-test-{os.getpid()}/scene.qsam"
    remote = pickle.loads(pickle.dumps(RemoteTileWriter(url, layout, "float16")))
    record = remote.write(tile, features, valid)
    assert record == TileWriter(tmp_path, layout, "float16").write(tile, features, valid)
    fs = fsspec.filesystem("memory")
    stored = {Path(name).name: fs.cat_file(name) for name in fs.find(url)}
    assert stored == {path.name: path.read_bytes() for path in (tmp_path / "tiles").iterdir()}
    with bound_to_url(tmp_path / "working", url):
        check = remote_tile_check(tmp_path / "working", layout, np.dtype("float16"))
        assert check(tile, record) is None
        fs.pipe_file(f"{url}/tiles/{tile.tile_id}.npy", b"short")
        assert "is 5 bytes" in remote_tile_check(tmp_path / "working", layout, np.dtype("float16"))(tile, record)
        first = TileGrid.build(100, 90, 64, 16).tiles[0]
        assert "missing" in check(first, TileRecord(first.tile_id, "done", 1, 1.0))
    assert remote_tile_check(tmp_path / "working", layout, np.dtype("float16")) is None   # unbound: a local store


@pytest.mark.slow
def test_an_encode_into_s3_on_two_local_dask_workers_equals_the_local_store(s3, encoded, raster, tmp_path):
    """`--workers 2`: the workers write every tile into the bucket (none lands in the coordinator's working copy),
    a worker's decoder reaches the bucket through the coordinator, each tile is logged once, and the pulled store
    equals the local single-process store (features within one float16 step)."""
    pytest.importorskip("distributed", reason="the Dask path needs the package distributed (dask[distributed])")
    url = f"s3://{BUCKET}/e/scene.qsam"
    result = _run(["encode", raster, url, *TILE_OPTIONS, "--device", "cpu", "--workers", 2, "--progress-json"], s3,
                  tmp_path)
    assert result.returncode == 0, result.stderr
    start = next(json.loads(line) for line in result.stdout.splitlines() if '"start"' in line)
    assert start["workers"] == 2 and start["store"] == url
    log = [record["tile_id"] for record in _log(s3, "e/scene.qsam")]
    assert len(log) == len(set(log)) == 9
    assert not list((tmp_path / "cache").rglob("*.npy"))   # the tiles went to the bucket, not the working copy
    assert "decoder.onnx" in _objects(s3, "e/scene.qsam")
    assert _run(["pull", url, tmp_path / "pulled"], s3, tmp_path).returncode == 0
    assert_same_features(tmp_path / "pulled", encoded["local"])
