"""A feature store given as an fsspec URL of an object store: s3://, gs://, az://, ... (no QGIS, no torch).

`quicksam encode RASTER s3://bucket/prefix/scene.qsam` keeps the tiles in the object store and works on a
local working copy of the control files (encoder/remote_encode.py; docs/scaling.md). This module says
which store locations are URLs, opens their file system through fsspec, and turns what the protocol
packages raise into one line that says what to do. fsspec (which Dask brings) and the protocol packages
(s3fs, gcsfs, adlfs: the user's to install) are imported inside functions only, so that every core
module imports where they are missing.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Tuple, Union

from .errors import QuickSamError

#: A URL: a scheme of letters, digits, '+', '-' or '.', then "://" (a Windows path "C:\\..." is not one).
_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")
#: Protocols that are plain local paths: the store is then an ordinary folder.
LOCAL_PROTOCOLS = ("file", "local")
#: Protocols fsspec reads but cannot write whole objects to: refused as a store location.
READ_ONLY_PROTOCOLS = ("http", "https")

StoreLocation = Union[Path, str]


def url_protocol(text: str) -> str:
    """The protocol of a URL ("s3"), lower case; "" for a path."""
    match = _URL.match(str(text))
    return match.group("protocol").lower() if match else ""


def is_object_store_url(location: object) -> bool:
    """Whether a store location is an fsspec URL of a remote store (s3://, gs://, az://, memory://, ...);
    False for a path and for file:// (a local folder)."""
    protocol = url_protocol(str(location)) if isinstance(location, str) else ""
    return bool(protocol) and protocol not in LOCAL_PROTOCOLS


def store_location(text: str) -> StoreLocation:
    """A command line's store argument: the URL as given (str) for an object store, else a Path (a file://
    URL becomes its local path). argparse type."""
    if is_object_store_url(text):
        return text.rstrip("/")
    if url_protocol(text) in LOCAL_PROTOCOLS:
        return Path(_URL.match(text).group("rest"))
    return Path(text)


def join_url(url: str, *parts: str) -> str:
    """`url` with the relative POSIX `parts` appended ("s3://b/s.qsam", "tiles", "0_0.npy")."""
    tail = "/".join(part.strip("/") for part in parts if part and part != ".")
    return f"{url.rstrip('/')}/{tail}" if tail else url.rstrip("/")


def _package_of(protocol: str) -> Tuple[str, str]:
    """(pip package, fsspec's own advice) for a protocol fsspec knows but cannot import; ("", "") if unknown."""
    from fsspec.registry import known_implementations

    known = known_implementations.get(protocol)
    if known is None:
        return "", ""
    top = known["class"].split(".")[0]
    return ("" if top == "fsspec" else top), known.get("err", "")


def _missing_package_error(url: str, protocol: str, exc: BaseException) -> QuickSamError:
    package, advice = _package_of(protocol)
    if package:
        return QuickSamError(f"the store '{url}' needs the package {package}, which this Python ({sys.executable}) "
                             f"lacks: pip install {package} into the Python that runs the encoder")
    detail = advice or " ".join(str(exc).split())
    return QuickSamError(f"the store '{url}' cannot be opened ({detail}); install what it names into the Python "
                         f"that runs the encoder ({sys.executable})")


def open_url(url: str) -> Tuple[Any, str]:
    """(fsspec file system, path inside it) of a store URL; credentials and endpoints come from the protocol
    package's usual configuration (environment, config files; docs/scaling.md). QuickSamError in one line for
    an unknown protocol, a read-only one (HTTP), or a missing protocol package (naming `pip install s3fs`)."""
    protocol = url_protocol(url)
    if protocol in READ_ONLY_PROTOCOLS:
        raise QuickSamError(f"a feature store cannot be written or listed over {protocol}:// ('{url}'); use an "
                            "object store URL (s3://, gs://, az://) or a folder")
    try:
        from fsspec.core import url_to_fs
    except ImportError:
        raise QuickSamError(f"the store '{url}' needs the package fsspec, which this Python ({sys.executable}) "
                            "lacks: pip install fsspec (and the package of its protocol, e.g. s3fs)") from None
    try:
        return url_to_fs(url)
    except ImportError as exc:
        raise _missing_package_error(url, protocol, exc) from None
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise QuickSamError(f"the store URL '{url}' is not valid ({' '.join(str(exc).split())})") from None
        raise QuickSamError(f"no installed file system knows the protocol '{protocol}://' of the store '{url}'; "
                            "use s3://, gs://, az:// (with s3fs, gcsfs or adlfs installed) or a folder") from None


def _reason(exc: BaseException) -> str:
    """A protocol package's exception as a few words on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def remote_errors(url: str, doing: str) -> Iterator[None]:
    """Turn what a protocol package raises in the block (no endpoint, refused credentials, a missing bucket,
    a network error) into one QuickSamError line naming `url` and what was being done ("writing a tile")."""
    try:
        yield
    except QuickSamError:
        raise
    except (KeyboardInterrupt, MemoryError):
        raise
    except FileNotFoundError as exc:
        raise QuickSamError(f"{doing} failed: '{url}' does not exist ({_reason(exc)}); check the URL (does the "
                            "bucket exist?)") from None
    except PermissionError as exc:
        raise QuickSamError(f"{doing} failed: access to '{url}' was refused ({_reason(exc)}); check your "
                            "credentials and the bucket's permissions") from None
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, google and azure errors have no common base
        raise QuickSamError(f"{doing} failed for '{url}' ({type(exc).__name__}: {_reason(exc)}); check the URL, "
                            "the endpoint and your network, then run the same command again (it resumes)") from None


#: Protocols whose first path component is a bucket or container that must exist before a store goes in it.
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oci")


def check_reachable(url: str) -> None:
    """Before anything is written: the store's bucket (container) exists and its endpoint answers, else one
    QuickSamError line (a missing bucket, refused credentials, no endpoint). One request; a no-op for protocols
    without buckets."""
    fs, root = open_url(url)
    container = root.strip("/").split("/")[0]
    if url_protocol(url) not in BUCKET_PROTOCOLS or not container:
        return
    with remote_errors(url, "opening the store"):
        try:
            fs.info(container)
        except FileNotFoundError:
            raise QuickSamError(f"the bucket '{container}' of the store '{url}' does not exist (or these credentials "
                                "cannot see it); create it first, or check the URL and the endpoint") from None
