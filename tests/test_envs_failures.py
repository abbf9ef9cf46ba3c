"""Each way a set-up step fails gives one line that says what to do; the real ones are made real (pip
pointed at an unreachable index, a read-only folder, a full disk, a missing Python)."""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from quicksam.core.errors import Cancelled
from quicksam.envs.commands import Runner
from quicksam.envs.encoder_env import check_python
from quicksam.envs.failures import FailureKind, SetupError, classify_output
from quicksam.envs.locations import staging_of
from quicksam.envs.runtime import install_runtime

QGIS_PYTHON = "/usr/bin/python3"

# What pip (23 to 25) prints in each case, cut to the telling lines.
PIP_OUTPUTS = {
    FailureKind.NO_NETWORK: "WARNING: Retrying (Retry(total=0...)) after connection broken by 'NewConnectionError("
                            "'<pip._vendor.urllib3.connection.HTTPSConnection object>: Failed to establish a new "
                            "connection: [Errno -3] Temporary failure in name resolution')'\nERROR: Could not find a "
                            "version that satisfies the requirement onnxruntime\nERROR: No matching distribution found",
    FailureKind.PROXY: "WARNING: Retrying ... after connection broken by 'ProxyError('Cannot connect to proxy.', "
                       "OSError('Tunnel connection failed: 407 Proxy Authentication Required'))'",
    FailureKind.NO_SPACE: "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device",
    FailureKind.PIP_REFUSED: "error: externally-managed-environment\n\n× This environment is externally managed",
    FailureKind.READ_ONLY: "ERROR: Could not install packages due to an OSError: [Errno 30] Read-only file system: "
                           "'/ro/x'",
}


@pytest.mark.parametrize("kind", list(PIP_OUTPUTS))
def test_pip_output_is_classified(kind):
    assert classify_output(PIP_OUTPUTS[kind]) is kind


def test_a_resolver_conflict_is_pip_refusing():
    text = "ERROR: Cannot install a and b because these package versions have conflicting dependencies.\n" \
           "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/..."
    assert classify_output(text) is FailureKind.PIP_REFUSED


def _offline_pip(monkeypatch) -> None:
    """pip sees only an index nobody listens on (port 9, discard), no find-links, no configuration."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    # One retry (pip's default is 5): pip names the connection error only in its "Retrying" warning.
    monkeypatch.setenv("PIP_RETRIES", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)


def _needs_qgis_python() -> None:
    if not Path(QGIS_PYTHON).exists():
        pytest.skip(f"needs QGIS's Python at {QGIS_PYTHON}")


def _assert_one_line(error: SetupError, kind: FailureKind, *words: str) -> None:
    message = str(error)
    assert error.kind is kind, message
    assert "\n" not in message and all(word in message for word in words), message


def test_unreachable_index_is_no_network_and_leaves_nothing(tmp_path, monkeypatch):
    _needs_qgis_python()
    _offline_pip(monkeypatch)
    folder = tmp_path / "profile" / "QuickSAM" / "runtime" / "py311"
    with pytest.raises(SetupError) as caught:
        install_runtime(Runner(tmp_path / "setup.log"), QGIS_PYTHON, folder, lambda f, m: None)
    _assert_one_line(caught.value, FailureKind.NO_NETWORK, "cannot reach the package index", "run the set-up again")
    assert not folder.exists() and not staging_of(folder).exists()
    assert "127.0.0.1:9" in (tmp_path / "setup.log").read_text()


class _DenyingProxy(http.server.BaseHTTPRequestHandler):
    """A proxy that wants credentials nobody gave it."""

    def do_CONNECT(self):  # noqa: N802 - http.server's naming
        self.send_response(407, "Proxy Authentication Required")
        self.send_header("Proxy-Authenticate", 'Basic realm="office"')
        self.end_headers()

    do_GET = do_CONNECT  # noqa: N815

    def log_message(self, *args):
        pass


def test_a_proxy_asking_for_credentials_is_proxy(tmp_path, monkeypatch):
    _needs_qgis_python()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DenyingProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _offline_pip(monkeypatch)
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.org/simple")
    monkeypatch.setenv("PIP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with pytest.raises(SetupError) as caught:
            install_runtime(Runner(tmp_path / "setup.log"), QGIS_PYTHON, tmp_path / "rt" / "py311",
                            lambda f, m: None)
    finally:
        server.shutdown()
    _assert_one_line(caught.value, FailureKind.PROXY, "a proxy blocked the download", "global.proxy")


@contextlib.contextmanager
def _mounted_tmpfs(folder: Path, options: str):
    folder.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"needs to mount a tmpfs ({result.stderr.decode(errors='replace').strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def _read_only(folder: Path):
    """A folder nobody may write into: a read-only mount for root (who ignores permissions), else 0o555."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        with _mounted_tmpfs(folder, "ro,size=1m"):
            yield folder
        return
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


def test_read_only_profile_is_read_only(tmp_path):
    _needs_qgis_python()
    with _read_only(tmp_path / "profile") as profile, pytest.raises(SetupError) as caught:
        install_runtime(Runner(tmp_path / "setup.log"), QGIS_PYTHON, profile / "QuickSAM" / "runtime" / "py311",
                        lambda f, m: None)
    _assert_one_line(caught.value, FailureKind.READ_ONLY, "cannot write to", str(tmp_path / "profile"))


@pytest.mark.slow
def test_full_disk_is_no_space(tmp_path):
    """pip downloads ONNX Runtime (about 17 MB) but the profile's disk holds 2 MB."""
    _needs_qgis_python()
    with _mounted_tmpfs(tmp_path / "profile", "size=2m") as profile, pytest.raises(SetupError) as caught:
        install_runtime(Runner(tmp_path / "setup.log"), QGIS_PYTHON, profile / "QuickSAM" / "runtime" / "py311",
                        lambda f, m: None)
        assert not any(profile.rglob("*.dist-info"))
    _assert_one_line(caught.value, FailureKind.NO_SPACE, "free some space")


def test_missing_python_is_no_python(tmp_path):
    with pytest.raises(SetupError) as caught:
        install_runtime(Runner(tmp_path / "setup.log"), str(tmp_path / "no" / "python3"), tmp_path / "rt",
                        lambda f, m: None)
    _assert_one_line(caught.value, FailureKind.NO_PYTHON, "cannot start the Python", "Choose existing Python")
    with pytest.raises(SetupError) as caught:
        check_python(Runner(tmp_path / "setup.log"), str(tmp_path / "no" / "python3"))
    assert caught.value.kind is FailureKind.NO_PYTHON


def test_cancel_kills_the_tool(tmp_path):
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    runner = Runner(tmp_path / "setup.log", is_cancelled=cancelled)
    with pytest.raises(Cancelled):
        runner.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"], "waiting")
    assert "cancelled" in (tmp_path / "setup.log").read_text()
