"""quicksam:segmentprompts's on-demand tiles: objects no tile of the store holds get one tile centred on their
prompts, encoded in the encoder's process (ui/tile_encoder.py), when ENCODE_MISSING is set; FINEST_ONLY decodes
at the finest level only (full resolution). The CLI's `segment --encode-missing --finest` set them."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from qgis.core import (
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
)

from ...core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ...core.store import FeatureStore
from ...interactive.engine import MapPrompts, NoTilePromptError, Segment, SegmentEngine
from ...interactive.scales import MultiScaleEngine, open_engine
from ..i18n import tr as _tr
from ..tile_encoder import run_tile_encoder
from .encoder_events import in_dialog_words, record_environment_failure

ENCODE_MISSING = "ENCODE_MISSING"
FINEST_ONLY = "FINEST_ONLY"


def missing_tile_parameters() -> List[Tuple[QgsProcessingParameterDefinition, str]]:
    """The two parameters with their help texts (advanced)."""
    return [
        (QgsProcessingParameterBoolean(ENCODE_MISSING, _tr("Encode missing tiles"), defaultValue=False),
         _tr("When no tile of the store holds an object's prompts (across a tile border, or outside the encoded "
             "area), encode one tile centred on them in the encoder's process and add it to the store (reused "
             "later). Needs the encoder's environment (QuickSAM > Set up…).")),
        (QgsProcessingParameterBoolean(FINEST_ONLY, _tr("Full resolution only (finest level)"), defaultValue=False),
         _tr("Decode every object at the store's finest level, never at a coarser one; with 'Encode missing tiles' "
             "the missing tiles are added to the finest level.")),
    ]


class ObjectSegmenter:
    """Segments objects on a store (`segment`, as `SegmentEngine.segment`), encoding a missing tile first where
    `encode_missing` (the engine is then opened again on the store that has it). `refine`: a multi-scale store's
    coarse objects get their edges refined (MultiScaleEngine.refine_edges). `command_line`: advice names the
    `quicksam segment` options."""

    def __init__(self, store: FeatureStore, encode_missing: bool, finest_only: bool, feedback: QgsProcessingFeedback,
                 command_line: bool, refine: bool = False) -> None:
        self.root = store.root
        self.encode_missing = encode_missing
        self.finest_only = finest_only
        self.refine = refine
        self.feedback = feedback
        self.command_line = command_line
        self.engine: SegmentEngine = self._open(store)
        #: Tiles this run encoded (their ids).
        self.tiles_encoded: List[str] = []

    def segment(self, prompts: MapPrompts, **options: Any) -> List[Segment]:
        """The engine's segments of `prompts` (raster CRS); PromptError/QuickSamError as the engine's, the
        advice to encode a missing tile added when this run does not. QgsProcessingException (the run stops)
        when the encoder is cancelled or its environment is missing."""
        try:
            return self.engine.segment(prompts, **options)
        except NoTilePromptError as exc:
            if not self.encode_missing:
                raise NoTilePromptError(f"{exc}; {self._advice()}", exc.prompts) from None
        self._encode_tile(prompts)
        return self.engine.segment(prompts, **options)

    def _advice(self) -> str:
        if self.command_line:
            return _tr("pass --encode-missing to encode that tile")
        return _tr("tick 'Encode missing tiles' (advanced parameters) to encode that tile")

    def _encode_tile(self, prompts: MapPrompts) -> None:
        """Encode the tile holding `prompts` in the encoder's process, then open the engine again."""
        self.feedback.pushInfo(_tr("No tile holds {prompts}: encoding one there…").format(prompts=prompts.describe()))
        try:
            summary = run_tile_encoder(str(self.root), prompts, self.finest_only, self._on_event,
                                       self.feedback.isCanceled)
        except Cancelled as exc:
            raise QgsProcessingException(_tr("Segmentation cancelled while a tile was encoded; run it again to "
                                             "finish that tile.")) from exc
        except EncoderEnvironmentError as exc:
            record_environment_failure()
            raise QgsProcessingException(self._words(str(exc))) from exc
        except QuickSamError as exc:   # this object is skipped, saying why
            raise QuickSamError(self._words(str(exc))) from None
        self.tiles_encoded.append(str(summary.get("tile_id")))
        self.feedback.pushInfo(_tr("Tile {tile} of level {level} holds them ({state}).").format(
            tile=summary.get("tile_id"), level=summary.get("level"),
            state=_tr("encoded") if summary.get("encoded") else _tr("already encoded")))
        self.engine = self._open(FeatureStore.open(self.root))

    def _open(self, store: FeatureStore) -> SegmentEngine:
        """The engine on `store` with this run's options; QgsProcessingException when it cannot be opened."""
        try:
            engine = open_engine(store, finest_only=self.finest_only)
        except QuickSamError as exc:
            raise QgsProcessingException(str(exc)) from exc
        if isinstance(engine, MultiScaleEngine):
            engine.refine_edges = self.refine
        return engine

    def _words(self, message: str) -> str:
        """The encoder's message as is for the `quicksam` command, else in the dialog's words."""
        return message if self.command_line else in_dialog_words(message)

    def _on_event(self, event: Dict[str, Any]) -> None:
        if event.get("event") in ("stderr", "info", "log"):
            self.feedback.pushDebugInfo(str(event.get("message", "")))
        elif event.get("event") == "warning":
            self.feedback.pushWarning(str(event.get("message", "")))
