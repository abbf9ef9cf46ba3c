"""Reading a checkpoint's weights safely (torch, imported only here and only when called)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict

from ...core.errors import CheckpointError, EncoderEnvironmentError


def load_state_dict(path: Path) -> Dict[str, Any]:
    """The state dict in a checkpoint file, loaded on the CPU without unpickling arbitrary objects.

    SAM 2 files wrap the state dict in {"model": ...}; that inner dict is returned.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        import torch
    except ImportError as exc:
        raise EncoderEnvironmentError(
            f"PyTorch is needed to read checkpoints and this Python cannot import it ({exc}); install "
            "QuickSAM's encoder requirements"
        ) from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, AttributeError,
            TypeError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint QuickSAM can read safely (only tensors and "
            f"plain containers are accepted): {reason}"
        ) from exc
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint QuickSAM can read safely: it holds a "
            f"{type(loaded).__name__}, not a state dict"
        )
    inner = loaded.get("model")
    return inner if isinstance(inner, dict) else loaded
