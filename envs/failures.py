"""What went wrong in a set-up step, as one line that says what to do.

`classify_output` reads the text pip or venv printed (the order of the checks matters: pip prints
"No matching distribution found" both when the index cannot be reached and when no release fits, so
the network signs are looked for first).
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Optional

from ..core.errors import QuickSamError


class FailureKind(Enum):
    NO_NETWORK = "no_network"
    NO_SPACE = "no_space"
    NO_PYTHON = "no_python"
    PROXY = "proxy"
    PIP_REFUSED = "pip_refused"
    READ_ONLY = "read_only"
    NO_PIP = "no_pip"
    VERIFY = "verify"
    OTHER = "other"


class SetupError(QuickSamError):
    """A set-up step failed; `kind` says which way, the message (one line) what to do."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_PATTERNS = (
    (FailureKind.PROXY, re.compile(r"ProxyError|407 Proxy Authentication|Tunnel connection failed: 407", re.I)),
    (FailureKind.NO_SPACE, re.compile(r"No space left on device|\[Errno 28\]|ENOSPC|not enough space", re.I)),
    (FailureKind.READ_ONLY, re.compile(r"Read-only file system|\[Errno 30\]|\[Errno 13\]|Permission denied|"
                                       r"Access is denied|\[WinError 5\]", re.I)),
    (FailureKind.NO_NETWORK, re.compile(r"NewConnectionError|Failed to establish a new connection|"
                                        r"Connection refused|Temporary failure in name resolution|"
                                        r"Name or service not known|getaddrinfo failed|Network is unreachable|"
                                        r"ConnectTimeoutError|Read timed out|ReadTimeoutError|"
                                        r"SSLError|CERTIFICATE_VERIFY_FAILED|Max retries exceeded", re.I)),
    (FailureKind.PIP_REFUSED, re.compile(r"externally-managed-environment|ResolutionImpossible|"
                                         r"conflicting dependencies|No matching distribution found|"
                                         r"requires a different Python|Could not find a version", re.I)),
    (FailureKind.NO_PIP, re.compile(r"No module named pip\b|No module named 'pip'", re.I)),
)


def classify_output(text: str) -> FailureKind:
    """The failure kind whose signs appear in a tool's output (OTHER when none does)."""
    for kind, pattern in _PATTERNS:
        if pattern.search(text):
            return kind
    return FailureKind.OTHER


def last_error_line(text: str) -> str:
    """The most telling line of a tool's output: the last "ERROR:" line, else the last non-empty one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:") or "Error" in line.split(":")[0]]
    chosen = errors[-1] if errors else (lines[-1] if lines else "")
    return chosen[:300]


def failure_message(kind: FailureKind, what: str, folder: Optional[Path], detail: str,
                    log: Optional[Path]) -> str:
    """The one-line message for a failed step `what` ("installing ONNX Runtime"), writing into `folder`."""
    see_log = f" (details in {log})" if log else ""
    where = f" {folder}" if folder else " the target folder"
    advice = {
        FailureKind.NO_NETWORK: "cannot reach the package index: check the internet connection (or pip's "
                                "index and proxy settings) and run the set-up again",
        FailureKind.NO_SPACE: f"no space left on the disk of{where}: free some space (the encoder environment "
                              "needs up to 7 GB, the runtime about 100 MB) and run the set-up again",
        FailureKind.PROXY: "a proxy blocked the download: set the proxy for pip (`pip config set global.proxy "
                           "http://user:password@host:port`, or the HTTPS_PROXY variable) and run the set-up again",
        FailureKind.PIP_REFUSED: f"pip refused ({detail}): run the set-up again after an update of QuickSAM, "
                                 "or choose an existing Python that has the packages",
        FailureKind.READ_ONLY: f"cannot write to{where}: make it writable (or set QUICKSAM_DATA_DIR to a "
                               "writable folder) and run the set-up again",
        FailureKind.NO_PIP: "this Python has no pip: install pip for it (or choose another Python) and run "
                            "the set-up again",
        FailureKind.NO_PYTHON: detail,
        FailureKind.VERIFY: f"the new environment does not work ({detail}): run the set-up again to repair it",
        FailureKind.OTHER: f"failed ({detail})",
    }[kind]
    return f"{what}: {advice}{see_log}"


def failure(kind: FailureKind, what: str, folder: Optional[Path] = None, detail: str = "",
            log: Optional[Path] = None) -> SetupError:
    return SetupError(kind, failure_message(kind, what, folder, detail, log))
