"""Mask decoding from stored features with ONNX Runtime and numpy (no torch, no QGIS).

The decoder graph (prompt encoder + mask decoder) is exported once per store by the encoder; here it
runs on cached features. The prompt packing and post-processing are shared with the torch decoder
(core/mask_decoding.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.decoder_file import DecoderFileError, open_decoder_session, session_fit_problem
from ..core.mask_decoding import (
    DECODER_EXTRA_INPUTS,
    DecodeResult,
    DecoderSettings,
    Prompts,
    decoder_inputs,
    postprocess,
    prompt_arrays,
)
from .tile_side import TileSideDecoder, open_tile_side


class OnnxDecoder:
    """The store's exported decoder in ONNX Runtime.

    With `feature_shapes` ((C, H, W) per feature name) the graph is checked against them and `image_size`
    (DecoderFileError if it does not fit), so a decoder of another tile size fails here, plainly, and not
    at the first decode. With `split` (default) and a split decoder beside `onnx_path` (decoder_tile.onnx,
    decoder_prompt.onnx: SAM 2 stores written since 0.1.0), prompts without a mask_input run the prompt
    part on the tile part kept per tile (interactive/tile_side.py); others use the full graph.
    """

    def __init__(self, onnx_path: Path, family: str, feature_names: Sequence[str], image_size: int,
                 settings: DecoderSettings, threads: Optional[int] = None,
                 feature_shapes: Optional[Mapping[str, Sequence[int]]] = None, split: bool = True) -> None:
        self._session = open_decoder_session(onnx_path, threads)
        if feature_shapes is not None:
            problem = session_fit_problem(self._session, feature_shapes, image_size)
            if problem is not None:
                raise DecoderFileError(onnx_path, f"does not fit the store's tiles: it {problem}")
        self.family = family
        self.feature_names = list(feature_names)
        self.image_size = image_size
        self.settings = settings
        self._input_names = self.feature_names + list(DECODER_EXTRA_INPUTS)
        #: Whether the graph takes several objects per call (older exports took one).
        self.batched = self._takes_batches()
        self._on_cpu = self._session.get_providers()[0] == "CPUExecutionProvider"
        #: The split decoder, None for the full graph alone (old stores, SAM v1, split=False).
        self.tile_side: Optional[TileSideDecoder] = None
        if split and self.batched:
            self.tile_side = open_tile_side(onnx_path, self.feature_names, image_size, threads)

    def raw(self, features: Dict[str, np.ndarray], prompts: Prompts) -> Tuple[np.ndarray, np.ndarray]:
        """All model outputs: (M, L, L) logits and (M,) scores."""
        if self.tile_side is not None and prompts.mask_input is None:
            coords, labels = prompt_arrays(self.family, prompts)
            logits, scores = self.tile_side.run(features, coords[None], labels[None])
            return logits[0], scores[0]
        inputs = decoder_inputs(self.family, self.feature_names, features, prompts, self.image_size)
        logits, scores = self._session.run(None, dict(zip(self._input_names, inputs)))
        return logits[0], scores[0]

    def _takes_batches(self) -> bool:
        objects = self._session.get_inputs()[len(self.feature_names)].shape[0]
        return not isinstance(objects, int)

    @property
    def preferred_batch(self) -> int:
        """Objects per call that decode fastest here. Measured with SAM 2.1 tiny at 1024 px on a 2-core CPU
        (docs/segment-everything.md): 4 per call is the fastest and 64 is about 25 % slower per object and
        needs ~3.9 GB (bench/decoder_batch.py); a GPU wants large batches, as in SAM's generator."""
        if not self.batched:
            return 1
        return 4 if self._on_cpu else 64

    def raw_points(self, features: Dict[str, np.ndarray], points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """All model outputs for many single-foreground-point objects on one tile: (B, M, L, L) logits and
        (B, M) scores, in one call when the graph is batched, else one call per point."""
        prompts = [Prompts(points=[point], labels=[1]) for point in np.asarray(points, np.float64).reshape(-1, 2)]
        if not self.batched:
            outputs = [self.raw(features, prompt) for prompt in prompts]
            return np.stack([o[0] for o in outputs]), np.stack([o[1] for o in outputs])
        if self.tile_side is not None:
            packed = [prompt_arrays(self.family, prompt) for prompt in prompts]
            return self.tile_side.run(features, np.stack([c for c, _ in packed]), np.stack([lab for _, lab in packed]))
        per_object = [decoder_inputs(self.family, self.feature_names, features, p, self.image_size)
                      for p in prompts]
        count = len(self.feature_names)
        inputs = per_object[0][:count] + [np.concatenate([o[i] for o in per_object])
                                          for i in range(count, count + len(DECODER_EXTRA_INPUTS))]
        logits, scores = self._session.run(None, dict(zip(self._input_names, inputs)))
        return logits, scores

    def decode(self, features: Dict[str, np.ndarray], prompts: Prompts,
               multimask: bool = True) -> DecodeResult:
        logits, scores = self.raw(features, prompts)
        return postprocess(logits, scores, multimask, self.settings, self.image_size)
