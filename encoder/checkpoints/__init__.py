"""Finding, downloading, verifying and loading model checkpoints (no QGIS; torch only when loading).

Where things live (never inside the plugin folder, which is deleted on reinstall):

- downloaded checkpoints: ``cache_dir() / "checkpoints"``; official ones under their file name,
  custom ones under ``custom/<name>/<file name>`` so two fine-tunes called ``model.pt`` cannot
  overwrite each other;
- memoised SHA-256 of checkpoint files: ``cache_dir() / "checkpoints" / "hashes.json"``, keyed by
  resolved path and checked against size and ``mtime_ns``, so a 900 MB file is hashed once;
- the registry of custom checkpoints (fine-tunes such as micro-sam): ``config_dir() /
  "checkpoints.json"``.

A custom checkpoint registered by path is stored as a :class:`CheckpointSpec` whose ``url`` is the
file's ``file://`` URL. Any checkpoint with a ``file://`` URL is used where it lies, not copied into
the cache. A custom URL registered without a SHA-256 is trusted on first download: the hash of what
was downloaded then becomes its identity and is written back to the registry.

One module per job: paths.py (folders, small JSON files), hashes.py (the hash memo), download.py,
registry.py (custom checkpoints), resolve.py (a name or path to a verified file), loading.py (weights).
"""

from .download import CancelCallback, ProgressCallback, download
from .hashes import CHUNK_SIZE, checkpoint_sha256, sha256_file
from .loading import load_state_dict
from .paths import cache_dir, checkpoints_dir, config_dir, registry_path
from .registry import all_checkpoints, custom_checkpoints, register_checkpoint, unregister_checkpoint
from .resolve import ResolvedCheckpoint, cached_checkpoint, checkpoint_cache_path, resolve_checkpoint

__all__ = [
    "CHUNK_SIZE", "CancelCallback", "ProgressCallback", "ResolvedCheckpoint", "all_checkpoints", "cache_dir",
    "cached_checkpoint", "checkpoint_cache_path", "checkpoint_sha256", "checkpoints_dir", "config_dir",
    "custom_checkpoints", "download", "load_state_dict", "register_checkpoint", "registry_path",
    "resolve_checkpoint", "sha256_file", "unregister_checkpoint",
]
