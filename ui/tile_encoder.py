"""One on-demand tile encoded in the encoder's process (`quicksam encode-tile`, encoder/on_demand.py), for the
Segment dock and quicksam:segmentprompts (QGIS layer: the encoder's Python comes from the settings; QGIS's own
Python never imports torch)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ..encoder.subprocess_runner import run_encoder_process
from ..interactive.engine import MapPrompts
from .algorithms.encoder_events import CLI_ERROR_LINE
from .settings import encoder_python

#: The level `--level` names for "full resolution": the finest level (factor 1 of its own pixel size).
FINEST_LEVEL = 1


def encode_tile_args(store: str, prompts: MapPrompts, finest_only: bool) -> List[str]:
    """Arguments of `quicksam.cli` for a tile of `store` holding `prompts` (raster CRS): at the finest level with
    `finest_only`, else at the finest level where one tile holds them with a margin. Options in the
    `--name=value` form, so that a negative coordinate is never taken for an option."""
    args = ["encode-tile", str(store)]
    args += [f"--point={x!r},{y!r}" for x, y in prompts.points]
    if prompts.box is not None:
        args.append("--box=" + ",".join(repr(float(value)) for value in prompts.box))
    if finest_only:
        args.append(f"--level={FINEST_LEVEL}")
    return args


def run_tile_encoder(store: str, prompts: MapPrompts, finest_only: bool, on_event: Callable[[Dict[str, Any]], None],
                     is_cancelled: Callable[[], bool], python: Optional[str] = None) -> Dict[str, Any]:
    """Encode (or reuse) the tile of `store` holding `prompts` in the encoder's process (`python`, default the
    settings' `encoder_python()`); blocks until it ends, so call it off the GUI thread. `on_event` gets every
    event (subprocess_runner.run_encoder_process). Returns the `finished` event's summary (`tile_id`, `level`,
    `factor`, `encoded`...). Cancelled when `is_cancelled()`; EncoderEnvironmentError when the encoder's Python
    is missing or lacks a package; QuickSamError with the encoder's one line otherwise."""
    finished: Dict[str, Any] = {}

    def relay(event: Dict[str, Any]) -> None:
        if event.get("event") == "finished" and isinstance(event.get("summary"), dict):
            finished.update(event["summary"])
        on_event(event)

    try:
        run_encoder_process(encode_tile_args(store, prompts, finest_only), python or encoder_python(), relay,
                            is_cancelled)
    except (Cancelled, EncoderEnvironmentError):
        raise
    except QuickSamError as exc:  # the encoder's one line, without its "quicksam: error: "
        raise QuickSamError(CLI_ERROR_LINE.sub("", str(exc))) from None
    if not finished:
        raise QuickSamError("the encoder process ended without reporting its tile; see the QuickSAM log")
    return finished
