"""The test suite's own footprint: `make test` on a disk without room says so in one line before it starts, and a
session leaves no folder behind in the temporary folder (CI runs on a machine whose disk others use too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _session(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """A pytest session in a child process that selects no test, with its temporary folder in `tmp_path`."""
    child_env = {**os.environ, "TMPDIR": str(tmp_path), "QT_QPA_PLATFORM": "offscreen", **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_suite_room.py", "-k", "no_test_has_this_name"],
                          cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=300)


def test_a_disk_without_room_for_the_suite_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    run = _session(tmp_path, QUICKSAM_TEST_FREE_BYTES=str(10 ** 18))
    assert run.returncode == 3, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if "the test suite needs about" in line]
    assert len(lines) == 1, run.stdout
    assert f"free in {tmp_path}" in lines[0] and "free space there" in lines[0]


def test_a_session_removes_its_cache_folder_when_it_ends(tmp_path: Path) -> None:
    run = _session(tmp_path)
    assert run.returncode == 5, run.stdout + run.stderr   # pytest's "no tests ran": every test deselected
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith("quicksam-tests-")]
