"""Checkpoint cache, downloads (against a local HTTP server), the custom registry and safe loading.

No QGIS and no network: every URL points at a ThreadingHTTPServer on 127.0.0.1, and the cache and
config folders are temporary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from quicksam.core import catalogue
from quicksam.core.catalogue import CheckpointSpec
from quicksam.core.errors import Cancelled, CheckpointError
from quicksam.encoder import checkpoints
from quicksam.encoder.checkpoints import hashes

MIB = checkpoints.CHUNK_SIZE
FILE_SIZE = 3 * MIB + 12_345  # not a whole number of chunks


@dataclass
class FileServer:
    """A local HTTP server of the files in `root`, with knobs to misbehave and a request log."""

    root: Path
    base_url: str = ""
    #: (path, Range header or None) of every GET, in order.
    requests: List[Tuple[str, Optional[str]]] = field(default_factory=list)
    #: Send the full Content-Length but close after this many body bytes (None: send everything).
    truncate_after: Optional[int] = None
    #: Answer 200 with the whole file even when a Range is asked for.
    ignore_range: bool = False

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def add(self, name: str, data: bytes) -> str:
        """Serve `data` as `name`; returns its SHA-256."""
        (self.root / name).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def gets(self, name: str) -> int:
        return sum(1 for path, _ in self.requests if path == f"/{name}")


class _FileHandler(BaseHTTPRequestHandler):
    """GET of files under the server's root, honouring `Range: bytes=N-` with 206."""

    files: FileServer  # set on a per-fixture subclass

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.files.requests.append((self.path, range_header))
        file = self.files.root / self.path.lstrip("/")
        if not file.is_file():
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not self.files.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.files.truncate_after is not None:
            body = body[: self.files.truncate_after]
            self.close_connection = True
        for offset in range(0, len(body), 64 * 1024):
            self.wfile.write(body[offset : offset + 64 * 1024])

    def log_message(self, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    files = FileServer(root)
    handler = type("Handler", (_FileHandler,), {"files": files})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    files.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield files
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def quicksam_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tuple[Path, Path]:
    """Point the cache and config folders at tmp_path so nothing touches the real home."""
    cache, config = tmp_path / "cache", tmp_path / "config"
    monkeypatch.setenv("QUICKSAM_CACHE_DIR", str(cache))
    monkeypatch.setenv("QUICKSAM_CONFIG_DIR", str(config))
    return cache, config


@pytest.fixture
def payload() -> bytes:
    return os.urandom(FILE_SIZE)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- directories ---------------------------------------------------------------------------------


def test_dirs_follow_env_overrides(quicksam_dirs: Tuple[Path, Path]) -> None:
    cache, config = quicksam_dirs
    assert checkpoints.cache_dir() == cache
    assert checkpoints.checkpoints_dir() == cache / "checkpoints"
    assert checkpoints.config_dir() == config
    assert checkpoints.registry_path() == config / "checkpoints.json"


def test_dirs_default_to_per_user_locations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUICKSAM_CACHE_DIR")
    monkeypatch.delenv("QUICKSAM_CONFIG_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert checkpoints.cache_dir() == tmp_path / "xdg-cache" / "quicksam"
    assert checkpoints.config_dir() == tmp_path / "home" / ".config" / "quicksam"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert checkpoints.cache_dir() == tmp_path / "home" / "Library" / "Caches" / "quicksam"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "roaming"))
    assert checkpoints.cache_dir() == tmp_path / "local" / "quicksam" / "Cache"
    assert checkpoints.config_dir() == tmp_path / "roaming" / "quicksam"


# --- download ------------------------------------------------------------------------------------


def test_download_verifies_hash_and_reports_progress(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    sha = file_server.add("model.pt", payload)
    dest = tmp_path / "out" / "model.pt"
    calls: List[Tuple[int, Optional[int]]] = []
    result = checkpoints.download(
        file_server.url("model.pt"), dest, sha, progress=lambda d, t: calls.append((d, t))
    )
    assert result == sha
    assert dest.read_bytes() == payload
    assert not dest.with_name("model.pt.part").exists()
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == len(done)
    assert done[-1] == FILE_SIZE
    assert len(calls) >= FILE_SIZE // MIB + 1  # chunked, not one big read
    assert {t for _, t in calls} == {FILE_SIZE}
    assert file_server.requests == [("/model.pt", None)]


def test_download_resumes_from_part(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    sha = file_server.add("model.pt", payload)
    dest = tmp_path / "model.pt"
    half = FILE_SIZE // 2
    dest.with_name("model.pt.part").write_bytes(payload[:half])
    calls: List[Tuple[int, Optional[int]]] = []
    result = checkpoints.download(
        file_server.url("model.pt"), dest, sha, progress=lambda d, t: calls.append((d, t))
    )
    assert file_server.requests == [("/model.pt", f"bytes={half}-")]
    assert result == sha
    assert dest.read_bytes() == payload
    assert calls[0] == (half, FILE_SIZE)


def test_download_starts_over_when_server_ignores_range(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    sha = file_server.add("model.pt", payload)
    file_server.ignore_range = True
    dest = tmp_path / "model.pt"
    dest.with_name("model.pt.part").write_bytes(payload[:1000])
    assert checkpoints.download(file_server.url("model.pt"), dest, sha) == sha
    assert file_server.requests == [("/model.pt", "bytes=1000-")]
    assert dest.read_bytes() == payload


def test_complete_part_is_verified_without_downloading_again(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    sha = file_server.add("model.pt", payload)
    dest = tmp_path / "model.pt"
    dest.with_name("model.pt.part").write_bytes(payload)
    assert checkpoints.download(file_server.url("model.pt"), dest, sha) == sha
    assert file_server.requests == [("/model.pt", f"bytes={FILE_SIZE}-")]
    assert dest.read_bytes() == payload


def test_truncated_download_keeps_part_and_resumes(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    sha = file_server.add("model.pt", payload)
    file_server.truncate_after = MIB + 1000
    dest = tmp_path / "model.pt"
    part = dest.with_name("model.pt.part")
    with pytest.raises(CheckpointError, match="interrupted.*run the same command again"):
        checkpoints.download(file_server.url("model.pt"), dest, sha, timeout=5)
    assert not dest.exists()
    assert part.read_bytes() == payload[: MIB + 1000]

    file_server.truncate_after = None
    assert checkpoints.download(file_server.url("model.pt"), dest, sha) == sha
    assert file_server.requests[-1] == ("/model.pt", f"bytes={MIB + 1000}-")
    assert dest.read_bytes() == payload
    assert not part.exists()


def test_wrong_hash_deletes_part_and_names_both_hashes(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    actual = file_server.add("model.pt", payload)
    expected = "0" * 64
    dest = tmp_path / "model.pt"
    url = file_server.url("model.pt")
    with pytest.raises(CheckpointError) as info:
        checkpoints.download(url, dest, expected)
    message = str(info.value)
    assert expected in message and actual in message and url in message
    assert "not the expected checkpoint" in message
    assert not dest.exists()
    assert not dest.with_name("model.pt.part").exists()


def test_cancel_keeps_part_for_resuming(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    sha = file_server.add("model.pt", payload)
    dest = tmp_path / "model.pt"
    done: List[int] = [0]
    with pytest.raises(Cancelled):
        checkpoints.download(
            file_server.url("model.pt"),
            dest,
            sha,
            progress=lambda d, t: done.append(d),
            cancel=lambda: done[-1] >= MIB,
        )
    assert not dest.exists()
    assert dest.with_name("model.pt.part").read_bytes() == payload[:MIB]
    assert checkpoints.download(file_server.url("model.pt"), dest, sha) == sha
    assert file_server.requests[-1] == ("/model.pt", f"bytes={MIB}-")


def test_download_from_file_url(payload: bytes, tmp_path: Path) -> None:
    source = tmp_path / "source.pt"
    source.write_bytes(payload)
    dest = tmp_path / "copy.pt"
    assert checkpoints.download(source.as_uri(), dest, None) == sha256_of(payload)
    assert dest.read_bytes() == payload


def test_download_errors_are_one_line_and_say_what_to_do(
    file_server: FileServer, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="HTTP 404.*--checkpoint PATH") as info:
        checkpoints.download(file_server.url("missing.pt"), tmp_path / "m.pt", None)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="only http://, https:// and file://"):
        checkpoints.download("ftp://example.org/model.pt", tmp_path / "m.pt", None)
    # A port nobody listens on: the server fixture's port after it is closed is not reliable,
    # so use port 1 on loopback, which refuses connections.
    with pytest.raises(CheckpointError, match="check the network connection"):
        checkpoints.download("http://127.0.0.1:1/model.pt", tmp_path / "m.pt", None, timeout=5)
    assert not (tmp_path / "m.pt").exists()


# --- hash memo -----------------------------------------------------------------------------------


def test_checkpoint_sha256_is_memoised_until_the_file_changes(
    payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "big.pt"
    file.write_bytes(payload)
    hashed: List[Path] = []
    real_hash_of = hashes.hash_of
    monkeypatch.setattr(
        hashes, "hash_of", lambda path: hashed.append(path) or real_hash_of(path)
    )
    assert checkpoints.checkpoint_sha256(file) == sha256_of(payload)
    assert checkpoints.checkpoint_sha256(file) == sha256_of(payload)
    assert len(hashed) == 1
    memo = json.loads((checkpoints.checkpoints_dir() / "hashes.json").read_text())
    assert memo["files"][str(file.resolve())]["sha256"] == sha256_of(payload)
    # Same size, new content: only the modification time tells the memo it is stale.
    changed = bytes([255 - payload[0]]) + payload[1:]
    before = file.stat().st_mtime_ns
    file.write_bytes(changed)
    os.utime(file, ns=(before + 2_000_000_000, before + 2_000_000_000))
    assert checkpoints.checkpoint_sha256(file) == sha256_of(changed)
    assert len(hashed) == 2


# --- registry ------------------------------------------------------------------------------------


def test_register_by_path_and_by_url_then_resolve(
    file_server: FileServer, payload: bytes, tmp_path: Path
) -> None:
    local = tmp_path / "weights" / "microsam_vit_b.pt"
    local.parent.mkdir()
    local.write_bytes(payload[: MIB])
    remote_payload = payload[MIB:]
    remote_sha = file_server.add("finetune.pt", remote_payload)

    by_path = checkpoints.register_checkpoint("micro-sam", "sam_vit_b", path=local)
    assert by_path.url == local.resolve().as_uri()
    assert by_path.sha256 == sha256_of(payload[:MIB])
    by_url = checkpoints.register_checkpoint(
        "my-finetune", "sam2.1_hiera_t", url=file_server.url("finetune.pt"), sha256=remote_sha
    )
    stored = json.loads(checkpoints.registry_path().read_text())
    assert set(stored["checkpoints"]) == {"micro-sam", "my-finetune"}
    assert checkpoints.custom_checkpoints() == {"micro-sam": by_path, "my-finetune": by_url}
    everything = checkpoints.all_checkpoints()
    assert set(catalogue.CHECKPOINTS) < set(everything)
    assert everything["micro-sam"] == by_path

    from_path = checkpoints.resolve_checkpoint("micro-sam")
    assert from_path == checkpoints.ResolvedCheckpoint(
        local.resolve(), by_path.sha256, "micro-sam", "sam_vit_b", str(local.resolve())
    )
    assert file_server.requests == []  # used where it lies
    assert checkpoints.resolve_checkpoint(str(local), model="sam_vit_b").name == "micro-sam"

    from_url = checkpoints.resolve_checkpoint("my-finetune", model="sam2.1_hiera_t")
    assert from_url.path.read_bytes() == remote_payload
    assert from_url.path.is_relative_to(checkpoints.checkpoints_dir())
    assert (from_url.sha256, from_url.model, from_url.source) == (
        remote_sha, "sam2.1_hiera_t", file_server.url("finetune.pt"),
    )
    assert file_server.gets("finetune.pt") == 1

    checkpoints.unregister_checkpoint("micro-sam")
    assert set(checkpoints.custom_checkpoints()) == {"my-finetune"}
    with pytest.raises(CheckpointError, match="no custom checkpoint called 'micro-sam'"):
        checkpoints.unregister_checkpoint("micro-sam")


def test_url_without_hash_adopts_the_downloaded_hash(
    file_server: FileServer, payload: bytes
) -> None:
    sha = file_server.add("tofu.pt", payload)
    checkpoints.register_checkpoint("tofu", "sam_vit_l", url=file_server.url("tofu.pt"))
    assert checkpoints.custom_checkpoints()["tofu"].sha256 is None
    assert checkpoints.resolve_checkpoint("tofu").sha256 == sha
    assert checkpoints.custom_checkpoints()["tofu"].sha256 == sha


def test_registration_errors_are_clear(tmp_path: Path, payload: bytes) -> None:
    file = tmp_path / "ft.pt"
    file.write_bytes(payload[:100])
    with pytest.raises(CheckpointError, match="unknown model 'sam3'.*sam2.1_hiera_t"):
        checkpoints.register_checkpoint("ft", "sam3", path=file)
    with pytest.raises(CheckpointError, match="official checkpoint"):
        checkpoints.register_checkpoint("sam2.1_hiera_tiny", "sam2.1_hiera_t", path=file)
    with pytest.raises(CheckpointError, match="either a path or a URL"):
        checkpoints.register_checkpoint("ft", "sam_vit_b", path=file, url="https://x.org/ft.pt")
    with pytest.raises(CheckpointError, match="either a path or a URL"):
        checkpoints.register_checkpoint("ft", "sam_vit_b")
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.register_checkpoint("ft", "sam_vit_b", path=tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not the .* given"):
        checkpoints.register_checkpoint("ft", "sam_vit_b", path=file, sha256="a" * 64)
    assert not checkpoints.registry_path().exists()


def test_registered_file_that_changed_is_refused(tmp_path: Path, payload: bytes) -> None:
    file = tmp_path / "ft.pt"
    file.write_bytes(payload[:100])
    checkpoints.register_checkpoint("ft", "sam_vit_b", path=file)
    file.write_bytes(payload[100:300])
    with pytest.raises(CheckpointError, match="changed since it was registered"):
        checkpoints.resolve_checkpoint("ft")


# --- resolve -------------------------------------------------------------------------------------


def test_resolve_existing_path_needs_model(tmp_path: Path, payload: bytes) -> None:
    file = tmp_path / "unknown.pt"
    file.write_bytes(payload[:1000])
    with pytest.raises(CheckpointError, match="say which model this checkpoint is for with --model"):
        checkpoints.resolve_checkpoint(str(file))
    resolved = checkpoints.resolve_checkpoint(str(file), model="sam2_hiera_s")
    assert resolved == checkpoints.ResolvedCheckpoint(
        file.resolve(), sha256_of(payload[:1000]), "unknown.pt", "sam2_hiera_s", str(file.resolve())
    )


def test_resolve_unknown_name_lists_known_ones() -> None:
    with pytest.raises(CheckpointError, match="sam2.1_hiera_tiny.*sam_vit_h"):
        checkpoints.resolve_checkpoint("no-such-checkpoint")


def official_tiny_at(server: FileServer, payload: bytes, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the official SAM 2.1 tiny checkpoint at the local server; returns the URL."""
    sha = server.add("sam2.1_hiera_tiny.pt", payload)
    url = server.url("sam2.1_hiera_tiny.pt")
    spec = CheckpointSpec("sam2.1_hiera_tiny", "sam2.1_hiera_t", url, sha, len(payload))
    monkeypatch.setitem(catalogue.CHECKPOINTS, "sam2.1_hiera_tiny", spec)
    return url


def test_name_resolved_twice_downloads_once(
    file_server: FileServer, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = official_tiny_at(file_server, payload, monkeypatch)
    hashed: List[Path] = []
    real_hash_of = hashes.hash_of
    monkeypatch.setattr(
        hashes, "hash_of", lambda path: hashed.append(path) or real_hash_of(path)
    )
    first = checkpoints.resolve_checkpoint("sam2.1_hiera_tiny")
    second = checkpoints.resolve_checkpoint("sam2.1_hiera_tiny", model="sam2.1_hiera_t")
    assert first == second
    assert first == checkpoints.ResolvedCheckpoint(
        checkpoints.checkpoints_dir() / "sam2.1_hiera_tiny.pt",
        sha256_of(payload),
        "sam2.1_hiera_tiny",
        "sam2.1_hiera_t",
        url,
    )
    assert file_server.gets("sam2.1_hiera_tiny.pt") == 1
    assert hashed == []  # hashed while downloading, then memoised: never read back in full


def test_resolve_rejects_a_model_mismatch(
    file_server: FileServer, payload: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    official_tiny_at(file_server, payload, monkeypatch)
    with pytest.raises(CheckpointError, match="'sam2.1_hiera_t', not 'sam_vit_h'"):
        checkpoints.resolve_checkpoint("sam2.1_hiera_tiny", model="sam_vit_h")
    copy = tmp_path / "renamed.pt"
    copy.write_bytes(payload)  # an official file under another name is still recognised
    with pytest.raises(CheckpointError, match="'sam2.1_hiera_t', not 'sam_vit_h'"):
        checkpoints.resolve_checkpoint(str(copy), model="sam_vit_h")
    assert checkpoints.resolve_checkpoint(str(copy), model="sam2.1_hiera_t").name == (
        "sam2.1_hiera_tiny"
    )
    assert file_server.requests == []


def test_resolve_without_download_says_how_to_download(
    file_server: FileServer, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    official_tiny_at(file_server, payload, monkeypatch)
    with pytest.raises(CheckpointError, match="quicksam checkpoints download sam2.1_hiera_tiny"):
        checkpoints.resolve_checkpoint("sam2.1_hiera_tiny", download_missing=False)
    assert file_server.requests == []


def test_damaged_cached_file_is_downloaded_again(
    file_server: FileServer, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    official_tiny_at(file_server, payload, monkeypatch)
    target = checkpoints.checkpoints_dir() / "sam2.1_hiera_tiny.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(payload[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="damaged"):
        checkpoints.resolve_checkpoint("sam2.1_hiera_tiny", download_missing=False)
    resolved = checkpoints.resolve_checkpoint("sam2.1_hiera_tiny")
    assert resolved.sha256 == sha256_of(payload)
    assert target.read_bytes() == payload
    assert file_server.gets("sam2.1_hiera_tiny.pt") == 1


def test_cached_checkpoint_needs_a_complete_verified_file(
    file_server: FileServer, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    official_tiny_at(file_server, payload, monkeypatch)
    assert checkpoints.cached_checkpoint("sam2.1_hiera_t") is None
    downloaded = checkpoints.resolve_checkpoint("sam2.1_hiera_tiny")
    assert checkpoints.cached_checkpoint("sam2.1_hiera_t") == downloaded
    assert checkpoints.cached_checkpoint("sam_vit_b") is None
    assert file_server.gets("sam2.1_hiera_tiny.pt") == 1
    downloaded.path.write_bytes(payload[:MIB])
    assert checkpoints.cached_checkpoint("sam2.1_hiera_t") is None


# --- load_state_dict -----------------------------------------------------------------------------


class NotATensor:
    """An arbitrary object a safe loader must refuse to unpickle."""

    def __init__(self) -> None:
        self.value = 42


def test_load_state_dict_round_trips(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="load_state_dict needs PyTorch")
    wrapped, plain = tmp_path / "sam2.pt", tmp_path / "plain.pth"
    torch.save({"model": {"w": torch.arange(4.0)}}, wrapped)
    torch.save({"w": torch.arange(3.0), "b": torch.zeros(2)}, plain)
    loaded = checkpoints.load_state_dict(wrapped)
    assert list(loaded) == ["w"] and torch.equal(loaded["w"], torch.arange(4.0))
    loaded = checkpoints.load_state_dict(plain)
    assert list(loaded) == ["w", "b"] and torch.equal(loaded["b"], torch.zeros(2))


def test_load_state_dict_refuses_arbitrary_objects(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="load_state_dict needs PyTorch")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {"w": torch.ones(1)}, "extra": NotATensor()}, unsafe)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint QuickSAM can read safely"):
        checkpoints.load_state_dict(unsafe)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="can read safely"):
        checkpoints.load_state_dict(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load_state_dict(tmp_path / "missing.pt")


def test_served_checkpoint_downloads_verifies_and_loads_into_the_encoder(
    file_server: FileServer, tmp_path: Path
) -> None:
    """The whole path a user takes with a fine-tune: a checkpoint on a server is registered by URL with
    its SHA-256, `quicksam encode --checkpoint NAME` downloads and verifies it, builds the model from it,
    and the store records the checkpoint's hash as its identity. The features equal those of the
    model the checkpoint was made from."""
    import io
    import subprocess
    import sys

    import numpy as np
    import torch
    from synthetic import write_raster

    from quicksam.core.store import FeatureStore
    from quicksam.encoder.models import build_model

    source = build_model("sam2.1_hiera_t", seed=11, image_size=128)
    state = {name: tensor.half() for name, tensor in source.net.state_dict().items()}  # half: a smaller file
    buffer = io.BytesIO()
    torch.save({"model": state}, buffer)
    sha = file_server.add("tuned.pt", buffer.getvalue())
    checkpoints.register_checkpoint("my-tune", "sam2.1_hiera_t", url=file_server.url("tuned.pt"), sha256=sha)

    image = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    raster = write_raster(tmp_path / "rgb.tif", image)
    store_dir = tmp_path / "store"
    run = subprocess.run([sys.executable, "-m", "quicksam.cli", "encode", str(raster), str(store_dir),
                          "--checkpoint", "my-tune", "--tile-size", "128", "--stretch", "none",
                          "--feature-dtype", "float32"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert file_server.gets("tuned.pt") == 1

    store = FeatureStore.open(store_dir)
    assert store.checkpoint_sha256 == sha
    assert store.manifest.model.random_weights is False
    for name, tensor in source.net.state_dict().items():  # what the file holds, back in float32
        source.net.state_dict()[name].copy_(tensor.half().float())
    expected = source.encode(np.moveaxis(image, 0, -1)[None])[0]
    stored = store.load_tile(store.grid.tiles[0].tile_id)
    for name, array in expected.items():
        np.testing.assert_allclose(stored[name], array, atol=1e-5)
