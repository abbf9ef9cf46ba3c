"""Damaged feature stores: every damage gives one line naming the key or file and the fix, or a repair.

One intact store (420 x 400 px raster, 2 x 2 tiles of 256 px, seeded random tiny SAM 2.1) is built once
per module; each case damages a copy. Commands run as real `quicksam` processes (tests/synthetic.py);
the commands of one case run at the same time, each on its own copy, to keep the module fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Sequence

import numpy as np
import pytest
from synthetic import (
    assert_one_line_error,
    cli_command,
    encode,
    encode_args,
    file_states,
    pixel_to_map_default,
    random_model,
    run_cli,
    square_scene,
    write_raster,
)

from quicksam.core.errors import StoreError
from quicksam.core.mask_decoding import DecoderSettings
from quicksam.core.store import FeatureStore

#: A point inside tile r0000c0000 only (cols and rows 0-256 of the 420 x 400 raster), in EPSG:32633.
POINT_IN_FIRST_TILE = pixel_to_map_default(60, 60)
DAMAGED_TILE = "r0000c0000"
#: A tile encoded again in another process may differ from the first encoding by a few float32 ulps
#: (torch's CPU kernels sum in an order that depends on threads and SIMD path), and rounding that to the
#: stored float16 can then move a value by one float16 step: 2^-11 of its magnitude. Two steps of
#: relative tolerance, plus an absolute one for values near zero, hold on any CPU.
FLOAT16_RTOL = 2.0 ** -10
FLOAT16_ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Intact:
    raster: Path
    store: Path


@pytest.fixture(scope="module")
def intact(tmp_path_factory) -> Intact:
    """The intact store, made in-process with the settings `encode_args` gives the CLI (so that
    `quicksam encode` resumes it)."""
    folder = tmp_path_factory.mktemp("intact")
    raster = write_raster(folder / "scene.tif", square_scene(420, 400, (100, 100, 80)))
    store, _ = encode(raster, folder / "store", overlap=32)
    assert len(store.grid) == 4 and store.summary()["complete"]
    return Intact(raster, folder / "store")


def _copy(intact: Intact, folder: Path, name: str = "store") -> Path:
    return Path(shutil.copytree(intact.store, folder / name))


def _run_together(*commands: Sequence[str], timeout: float = 300) -> List[subprocess.CompletedProcess]:
    """Run several `quicksam` commands at once (as `synthetic.run_cli` runs one); their results in order."""
    processes = [subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for args in commands]
    results = []
    for args, process in zip(commands, processes):
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def _segment_args(store: Path, output: Path) -> List[str]:
    x, y = POINT_IN_FIRST_TILE
    return ["segment", str(store), f"--point={x},{y}", "--output", str(output)]


# -- the manifest ----------------------------------------------------------------------------------------

class ManifestDamage(NamedTuple):
    name: str
    damage: Callable[[dict], object]   # the parsed manifest -> a new one (JSON-able) or raw text
    hint: str                          # regex the one error line must match (the key)


def _set(path: str, value: object) -> Callable[[dict], dict]:
    """Set the value at a dotted path like 'grid.tiles.3.col_off'."""
    def damage(manifest: dict) -> dict:
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return manifest
    return damage


def _delete(path: str) -> Callable[[dict], dict]:
    def damage(manifest: dict) -> dict:
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node[part]
        del node[last]
        return manifest
    return damage


def _geotransform(*values: float) -> Callable[[dict], dict]:
    return _set("raster.geotransform", list(values))


def _nested(_: dict) -> str:
    depth = 100_000
    return ('{"format": "quicksam-feature-store", "format_version": 1, "grid": ' + "[" * depth + "]" * depth
            + "}")


MANIFEST_DAMAGES = [
    ManifestDamage("json array", lambda m: [m], r"manifest\.json of store .* must hold a JSON object, found \[\{"),
    ManifestDamage("json null", lambda m: None, r"manifest\.json of store .* must hold a JSON object, found null"),
    ManifestDamage("deeply nested", _nested, r"manifest\.json of store .* nested too deeply"),
    ManifestDamage("no format", _delete("format"), r"is not a QuickSAM manifest \(its format is null"),
    ManifestDamage("no grid", _delete("grid"), r"manifest\.json of store .*: grid is missing"),
    ManifestDamage("no features", _delete("features"), r"manifest\.json of store .*: features is missing"),
    ManifestDamage("no model", _delete("model"), r"manifest\.json of store .*: model is missing"),
    ManifestDamage("no decoder", _delete("decoder"), r"manifest\.json of store .*: decoder is missing"),
    ManifestDamage("no crs_wkt", _delete("raster.crs_wkt"), r"raster\.crs_wkt is missing"),
    ManifestDamage("no preprocessing bands", _delete("preprocessing.bands"), r"preprocessing\.bands is missing"),
    ManifestDamage("tile size as a string", _set("grid.tile_size", "256"),
                   r'grid\.tile_size must be a positive integer at most 8192, found "256"'),
    ManifestDamage("pixel size as a string", _set("raster.geotransform.1", "10"),
                   r'raster\.geotransform\[1\] must be a finite number, found "10"'),
    ManifestDamage("negative tile size", _set("grid.tile_size", -5),
                   r"grid\.tile_size must be a positive integer at most 8192, found -5"),
    ManifestDamage("huge tile size", _set("grid.tile_size", 100_000),
                   r"grid\.tile_size must be a positive integer at most 8192, found 100000"),
    ManifestDamage("image size of another tile size", _set("model.image_size", 512),
                   r"model\.image_size must equal grid\.tile_size \(256\), found 512"),
    ManifestDamage("overlap as large as a tile", _set("grid.overlap", 256),
                   r"grid\.overlap must be an integer from 0 to 255, found 256"),
    ManifestDamage("tile outside the raster", _set("grid.tiles.3.col_off", 10_000),
                   r"grid\.tiles\[3\]\.col_off must be an integer from 0 to 419, found 10000"),
    ManifestDamage("tile not an object", _set("grid.tiles.1", "r0000c0001"),
                   r'grid\.tiles\[1\] must be a JSON object, found "r0000c0001"'),
    ManifestDamage("unknown dtype", _set("features.dtype", "float8"),
                   r"features\.dtype must be 'float16' or 'float32' or 'int8', found \"float8\""),
    ManifestDamage("offsets that do not add up", _set("features.arrays.1.offset", 65_543),
                   r"features\.arrays\[1\]\.offset must be 65536 \(the sum of the sizes of the arrays before it\)"),
    ManifestDamage("feature shape of 2 values", _set("features.arrays.0.shape", [256, 16]),
                   r"features\.arrays\[0\]\.shape must be a list of 3 values, found \[256, 16\]"),
    ManifestDamage("geotransform of 2 values", _geotransform(500000.0, 10.0),
                   r"raster\.geotransform must be a list of 6 values, found \[500000\.0, 10\.0\]"),
    ManifestDamage("NaN pixel size", _geotransform(500000.0, math.nan, 0.0, 4200000.0, 0.0, -10.0),
                   r"raster\.geotransform\[1\] must be a finite number, found NaN"),
    ManifestDamage("zero pixel size", _geotransform(500000.0, 0.0, 0.0, 4200000.0, 0.0, -10.0),
                   r"raster\.geotransform does not invert"),
    ManifestDamage("parallel pixel axes", _geotransform(500000.0, 10.0, 10.0, 4200000.0, -10.0, -10.0),
                   r"raster\.geotransform does not invert"),
    ManifestDamage("garbage CRS", _set("raster.crs_wkt", "GARBAGE"),
                   r"raster\.crs_wkt is not a CRS GDAL can read .*found \"GARBAGE\""),
    ManifestDamage("unknown model family", _set("model.family", "sam3"),
                   r"model\.family must be 'sam2' or 'sam1', found \"sam3\""),
    ManifestDamage("decoder setting as a string", _set("decoder.settings.stability_delta", "0.05"),
                   r'decoder\.settings\.stability_delta must be a finite number, found "0\.05"'),
]
#: Damage to a version-1 manifest (tests/data/store_v1: a 100 x 90 px raster, 2 x 2 tiles of 64 px), where
#: the raster size and the stretch mode were also written into the grid and the preprocessing.
V1_MANIFEST_DAMAGES = [
    ManifestDamage("grid of another raster size", _set("grid.raster_width", 101),
                   r"grid\.raster_width must equal raster\.width \(100\), found 101"),
    ManifestDamage("no grid raster height", _delete("grid.raster_height"), r"grid\.raster_height is missing"),
    ManifestDamage("no stretch mode", _delete("preprocessing.stretch_mode"), r"preprocessing\.stretch_mode is missing"),
    ManifestDamage("tile outside the raster", _set("grid.tiles.3.col_off", 10_000),
                   r"grid\.tiles\[3\]\.col_off must be an integer from 0 to 99, found 10000"),
    ManifestDamage("garbage CRS", _set("raster.crs_wkt", "GARBAGE"),
                   r"raster\.crs_wkt is not a CRS GDAL can read .*found \"GARBAGE\""),
]
VERSION_1_STORE = Path(__file__).parent / "data" / "store_v1"


def _damage_manifest(store: Path, damage: ManifestDamage) -> None:
    path = store / "manifest.json"
    damaged = damage.damage(json.loads(path.read_text()))
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))


@pytest.mark.parametrize("damage", MANIFEST_DAMAGES, ids=[d.name for d in MANIFEST_DAMAGES])
def test_damaged_manifest_is_one_line_naming_the_key(intact: Intact, tmp_path: Path, damage: ManifestDamage) -> None:
    """info, segment and a resumed encode each stop with one line naming the key and the fix, and leave
    the store as it was."""
    stores = [_copy(intact, tmp_path, name) for name in ("info", "segment", "encode")]
    for store in stores:
        _damage_manifest(store, damage)
    before = [file_states(store) for store in stores]
    results = _run_together(["info", stores[0]], _segment_args(stores[1], tmp_path / "out.gpkg"),
                            encode_args(intact.raster, stores[2]))
    for result in results:
        assert_one_line_error(result, damage.hint + r".*(encode the raster again into a new folder|"
                                                    r"choose the folder that 'quicksam encode' wrote)")
    assert [file_states(store) for store in stores] == before
    assert not (tmp_path / "out.gpkg").exists()


@pytest.mark.parametrize("damage", V1_MANIFEST_DAMAGES, ids=[d.name for d in V1_MANIFEST_DAMAGES])
def test_damaged_version_1_manifest_is_one_line_naming_the_key(tmp_path: Path, damage: ManifestDamage) -> None:
    """A version-1 store is checked as before: `quicksam info` stops with one line naming the key, and the
    store is left as it was."""
    store = Path(shutil.copytree(VERSION_1_STORE, tmp_path / "store"))
    _damage_manifest(store, damage)
    before = file_states(store)
    with pytest.raises(StoreError, match=damage.hint):
        FeatureStore.open(store)
    assert_one_line_error(run_cli("info", store), damage.hint + r".*encode the raster again into a new folder")
    assert file_states(store) == before


@pytest.mark.parametrize("damage", [d for d in MANIFEST_DAMAGES if d.name in (
    "no grid", "negative tile size", "garbage CRS", "offsets that do not add up", "NaN pixel size")],
    ids=lambda d: d.name)
def test_every_reader_refuses_a_damaged_manifest(intact: Intact, tmp_path: Path, damage: ManifestDamage,
                                                 qgis_app) -> None:
    """The readers inside QGIS: store lookup (by layer property and next to the raster), the engine, and
    the Processing algorithms (segment prompts, segment everything) that the CLI also runs."""
    from qgis.core import QgsProcessingException

    from quicksam.interactive.engine import SegmentEngine
    from quicksam.interactive.store_lookup import check_store_matches_layer, find_store
    from quicksam.ui.algorithms.segment_algorithm import open_store

    raster = Path(shutil.copy(intact.raster, tmp_path / "scene.tif"))
    store = _copy(intact, tmp_path, "scene.qsam")
    assert find_store(raster).store is not None   # found next to the raster while intact
    _damage_manifest(store, damage)
    with pytest.raises(StoreError, match=damage.hint):
        FeatureStore.open(store)
    with pytest.raises(StoreError, match=damage.hint):
        SegmentEngine.open(store)
    with pytest.raises(QgsProcessingException, match=damage.hint):
        open_store(str(store))
    problem = check_store_matches_layer(store, raster)
    assert "\n" not in problem and re.search(damage.hint, problem), problem
    lookup = find_store(raster, property_value=str(store))
    assert lookup.store is None and "this layer's saved store no longer fits" in lookup.problem
    assert find_store(raster).store is None


def test_decoder_settings_checked_are_the_decoders() -> None:
    from quicksam.core.store import DECODER_SETTING_TYPES

    assert {f.name for f in dataclasses.fields(DecoderSettings)} == set(DECODER_SETTING_TYPES)


# -- tiles, the decoder and the tile log ----------------------------------------------------------------

class FileDamage(NamedTuple):
    name: str
    damage: Callable[[Path, Dict[str, Path]], None]   # (store, {"decoder_512": path}) -> None
    hint: str                                          # what the refusals and warnings name
    repaired_by_resume: bool = True


def _tile(store: Path) -> Path:
    return store / "tiles" / f"{DAMAGED_TILE}.npy"


def _zero_bytes(store: Path, _: Dict) -> None:
    _tile(store).write_bytes(b"")


def _truncated(store: Path, _: Dict) -> None:
    data = _tile(store).read_bytes()
    _tile(store).write_bytes(data[:len(data) // 2])


def _bit_flipped(store: Path, _: Dict) -> None:
    data = bytearray(_tile(store).read_bytes())
    data[len(data) // 2] ^= 0x10
    _tile(store).write_bytes(bytes(data))


def _wrong_shape(store: Path, _: Dict) -> None:
    array = np.load(_tile(store))
    np.save(_tile(store), array.reshape(1, -1))   # the same values and bytes, another shape


def _missing(store: Path, _: Dict) -> None:
    _tile(store).unlink()


def _wrong_crc_in_log(store: Path, _: Dict) -> None:
    lines = (store / "tiles.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        if record["tile_id"] == DAMAGED_TILE:
            record["crc32"] ^= 1
    (store / "tiles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _garbage_decoder(store: Path, _: Dict) -> None:
    (store / "decoder.onnx").write_bytes(b"this is not an ONNX model\n" * 100)


def _truncated_decoder(store: Path, _: Dict) -> None:
    data = (store / "decoder.onnx").read_bytes()
    (store / "decoder.onnx").write_bytes(data[:len(data) // 3])


def _decoder_of_another_tile_size(store: Path, extra: Dict) -> None:
    shutil.copyfile(extra["decoder_512"], store / "decoder.onnx")


def _binary_log_line(store: Path, _: Dict) -> None:
    lines = (store / "tiles.jsonl").read_bytes().splitlines(keepends=True)
    (store / "tiles.jsonl").write_bytes(lines[0] + b"\x00\x9f\x92\x96\xff binary\n" + b"".join(lines[1:]))


def _unknown_status(store: Path, _: Dict) -> None:
    text = (store / "tiles.jsonl").read_text()
    (store / "tiles.jsonl").write_text(text.replace('"status": "done"', '"status": "encoding"', 1))


TILE_HINT = r"tile r0000c0000 .*tiles/r0000c0000\.npy "
DECODER_HINT = r"decoder.*decoder\.onnx"
FILE_DAMAGES = [
    FileDamage("zero-byte tile", _zero_bytes, TILE_HINT + r"is empty \(0 bytes\)"),
    FileDamage("truncated tile", _truncated, TILE_HINT + r"is \d+ bytes, \d+ expected"),
    FileDamage("bit-flipped tile", _bit_flipped, TILE_HINT + r"does not match its CRC-32"),
    FileDamage("wrong-shape tile", _wrong_shape, TILE_HINT + r"holds an array of shape \(1, \d+\)"),
    FileDamage("missing tile", _missing, TILE_HINT + r"is missing"),
    FileDamage("wrong CRC in the log", _wrong_crc_in_log, TILE_HINT + r"does not match its CRC-32"),
    FileDamage("garbage decoder", _garbage_decoder, DECODER_HINT + r".* cannot be loaded by ONNX Runtime"),
    FileDamage("truncated decoder", _truncated_decoder, DECODER_HINT + r".* cannot be loaded by ONNX Runtime"),
    FileDamage("decoder of another tile size", _decoder_of_another_tile_size,
               DECODER_HINT + r".* does not fit the store's tiles: it takes image_embed of 256 x 32 x 32, the "
                              r"store's tiles hold 256 x 16 x 16"),
    FileDamage("binary line in the tile log", _binary_log_line,
               r"tiles\.jsonl of store .*, line 2: is not text \(binary bytes\); delete that line", False),
    FileDamage("unknown status in the tile log", _unknown_status,
               r"tiles\.jsonl of store .*, line 1: tile r0000c0000 has status \"encoding\", which this QuickSAM "
               r"does not know", False),
]


@pytest.fixture(scope="module")
def extra_files(tmp_path_factory) -> Dict[str, Path]:
    """A decoder exported for 512 px tiles (same random model otherwise)."""
    path = tmp_path_factory.mktemp("decoder512") / "decoder.onnx"
    random_model(512).export_decoder_onnx(path)
    return {"decoder_512": path}


def _tiles(store: Path) -> Dict[str, Dict[str, np.ndarray]]:
    opened = FeatureStore.open(store)
    return {tile.tile_id: {name: np.array(array, dtype=np.float32)
                           for name, array in opened.load_tile(tile.tile_id).items()} for tile in opened.grid}


def _info(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return json.loads(result.stdout)


def _apply(damage: FileDamage, intact: Intact, folder: Path, name: str, extra: Dict[str, Path]) -> Path:
    store = _copy(intact, folder, name)
    damage.damage(store, extra)
    return store


@pytest.mark.slow
@pytest.mark.parametrize("damage", FILE_DAMAGES, ids=[d.name for d in FILE_DAMAGES])
def test_damaged_file_is_refused_plainly_and_resume_repairs_it(intact: Intact, tmp_path: Path, damage: FileDamage,
                                                               request) -> None:
    extra = request.getfixturevalue("extra_files") if damage.damage is _decoder_of_another_tile_size else {}
    stores = {name: _apply(damage, intact, tmp_path, name, extra)
              for name in ("info", "segment", "segment_all", "encode")}
    results = dict(zip(stores, _run_together(
        ["info", stores["info"]], _segment_args(stores["segment"], tmp_path / "out.gpkg"),
        ["segment-all", stores["segment_all"], "--output", tmp_path / "all.gpkg", "--points-per-side", "4"],
        encode_args(intact.raster, stores["encode"]))))

    assert_one_line_error(results["segment"], damage.hint + r".*re-run the same 'quicksam encode' command")
    if not damage.repaired_by_resume:   # the tile log: which tiles are encoded is unknown, so every command stops
        for name in ("info", "segment_all", "encode"):
            assert_one_line_error(results[name], damage.hint + r".*re-run the same 'quicksam encode' command")
        return
    summary = _info(results["info"])
    assert summary["complete"] is False
    if "decoder" in damage.name:
        assert summary["tiles_damaged"] == 0 and summary["tiles_done"] == 4
        assert summary["decoder_problem"]
        assert_one_line_error(results["segment_all"], damage.hint)
    else:
        assert (summary["tiles_damaged"], summary["tiles_done"], summary["decoder_problem"]) == (1, 3, None)
        assert list(summary["damaged_tiles"]) == [DAMAGED_TILE]
        assert_one_line_error(results["segment_all"], r"1 damaged tile\(s\) of the 4 to segment \(tile r0000c0000: "
                                                      r"tiles/r0000c0000\.npy .*re-run the same 'quicksam encode'")

    encoded = results["encode"]
    assert encoded.returncode == 0, encoded.stderr
    warnings = [line for line in encoded.stderr.splitlines()
                if line.endswith(("encoding it again", "exporting it again"))]
    assert len(warnings) == 1, encoded.stderr
    assert ("decoder.onnx of store" if "decoder" in damage.name else f"tile {DAMAGED_TILE} of store") in warnings[0]
    _assert_repaired(intact, stores["encode"], tile_encoded_again="decoder" not in damage.name)


def _assert_repaired(intact: Intact, store: Path, tile_encoded_again: bool) -> None:
    """Complete, every tile loads and equals the intact store's, the decoder decodes; only the damaged
    tile was written again, with a log line that supersedes the old one."""
    summary = FeatureStore.open(store).summary()   # what `quicksam info` prints
    assert summary["complete"] is True
    assert (summary["tiles_done"], summary["tiles_damaged"], summary["decoder_problem"]) == (4, 0, None)
    expected, repaired = _tiles(intact.store), _tiles(store)
    for tile_id, arrays in expected.items():
        for name, array in arrays.items():
            np.testing.assert_allclose(repaired[tile_id][name], array, rtol=FLOAT16_RTOL, atol=FLOAT16_ATOL,
                                       err_msg=f"{tile_id} {name}")
    kept, original = file_states(store / "tiles"), file_states(intact.store / "tiles")
    for name in original:
        if name != f"{DAMAGED_TILE}.npy":
            assert kept[name] == original[name], name   # intact tiles are never rewritten
    lines = [json.loads(line) for line in (store / "tiles.jsonl").read_text().splitlines()]
    assert len(lines) == (5 if tile_encoded_again else 4)
    if tile_encoded_again:
        assert lines[-1]["tile_id"] == DAMAGED_TILE and lines[-1]["status"] == "done"
    assert (store / "decoder.onnx").read_bytes() == (intact.store / "decoder.onnx").read_bytes()


def test_torn_last_log_line_is_still_ignored(intact: Intact, tmp_path: Path) -> None:
    """Only a line that is not the torn last one (no newline: a killed run's) is an error."""
    store = _copy(intact, tmp_path)
    with open(store / "tiles.jsonl", "ab") as handle:
        handle.write(b'{"tile_id": "r0001c00\xff')
    assert sorted(FeatureStore.open(store).records()) == ["r0000c0000", "r0000c0001", "r0001c0000", "r0001c0001"]


def test_a_tile_written_again_supersedes_its_old_log_line(intact: Intact, tmp_path: Path) -> None:
    store = _copy(intact, tmp_path)
    _bit_flipped(store, {})
    opened = FeatureStore.open(store)
    assert list(opened.verify_tiles()) == [DAMAGED_TILE]
    assert [tile.tile_id for tile in opened.pending_tiles()] == [DAMAGED_TILE]
    features = _tiles(intact.store)[DAMAGED_TILE]
    opened.write_tile(opened.grid.by_id(DAMAGED_TILE), features, 1.0)
    assert opened.pending_tiles() == [] and opened.verify_tiles() == {}
    reopened = FeatureStore.open(store)
    assert reopened.verify_tiles() == {}
    lines = (store / "tiles.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["tile_id"] == DAMAGED_TILE
    assert reopened.records()[DAMAGED_TILE].crc32 == json.loads(lines[-1])["crc32"]

