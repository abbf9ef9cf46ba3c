"""The split decoder of a SAM 2 store: the tile part (decoder_tile.onnx) run once per tile and kept in
memory, the prompt part (decoder_prompt.onnx) run per prompt (no torch, no QGIS).

The tile part gives the projections of the decoder's first layer that read only the image
(encoder/decoder_split.py): about a fifth of the decoder's arithmetic, which a click, a hover preview or
a segment-everything batch on an already decoded tile then skips. Prompts with a mask_input (refinement)
change the image side and use the full decoder.onnx.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.decoder_file import DecoderFileError, open_decoder_session
from ..core.logger import LOGGER
from ..core.store_layout import DECODER_PROMPT_ONNX, DECODER_TILE_ONNX

#: The tile part's outputs, which the prompt part takes (encoder/decoder_split.py TILE_OUTPUTS).
TILE_SIDE_NAMES = ("cross_keys", "cross_values", "image_queries")
POINT_INPUTS = ("point_coords", "point_labels")
#: Tiles whose tile side is kept (~6 MB each for SAM 2 at 1024 px), as many as the engine's feature cache.
DEFAULT_TILE_SIDE_TILES = 6


class TileSideDecoder:
    """The two graphs of a split decoder and an LRU of the tile side per tile (thread-safe).

    A tile is known by its image_embed array (the feature cache hands the same array for the same tile):
    the cache holds a reference to it, so an entry can only match the very array it was computed from.
    """

    def __init__(self, tile_path: Path, prompt_path: Path, feature_names: Sequence[str], image_size: int,
                 threads: Optional[int] = None, capacity: int = DEFAULT_TILE_SIDE_TILES) -> None:
        self._tile = open_decoder_session(tile_path, threads)
        self._prompt = open_decoder_session(prompt_path, threads)
        self.feature_names = list(feature_names)
        self._prompt_names = self.feature_names + list(TILE_SIDE_NAMES) + list(POINT_INPUTS)
        problem = self._fit_problem(image_size)
        if problem is not None:
            raise DecoderFileError(prompt_path, f"does not fit the store's tiles: it {problem}")
        side = list(self._tile.get_inputs()[0].shape)[-1]
        if side != image_size // 16:  # a tile part from another export than the prompt part
            raise DecoderFileError(tile_path, f"does not fit the store's tiles: it {_size_problem(side, image_size)}")
        self.capacity = capacity
        self._entries: OrderedDict[int, Tuple[np.ndarray, List[np.ndarray]]] = OrderedDict()
        self._lock = threading.Lock()
        #: How many times the tile part ran (tests, benches).
        self.tile_runs = 0

    def _fit_problem(self, image_size: int) -> Optional[str]:
        names = [arg.name for arg in self._prompt.get_inputs()]
        if sorted(names) != sorted(self._prompt_names):
            return f"takes {', '.join(names)}, not {', '.join(self._prompt_names)}"
        if [arg.name for arg in self._tile.get_inputs()] != [self.feature_names[0]]:
            return "has a tile part that does not take the store's first feature map"
        side = list(self._prompt.get_inputs()[0].shape)[-1]
        return None if side == image_size // 16 else _size_problem(side, image_size)

    def tile_side(self, features: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """The tile part's outputs for these features ((1, 8, h*w, 16) float32 each for SAM 2), computed on
        first use."""
        embed = features[self.feature_names[0]]
        with self._lock:
            entry = self._entries.get(id(embed))
            if entry is not None and entry[0] is embed:
                self._entries.move_to_end(id(embed))
                return entry[1]
        side = self._tile.run(None, {self.feature_names[0]: np.asarray(embed, np.float32)[None]})
        with self._lock:
            self.tile_runs += 1
            self._entries[id(embed)] = (embed, side)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return side

    def run(self, features: Dict[str, np.ndarray], coords: np.ndarray,
            labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(B, M, L, L) logits and (B, M) scores of B objects: coords (B, N, 2) float32 and labels (B, N)
        int64 as `decoder_inputs` packs them (no mask_input)."""
        arrays = [np.asarray(features[name], np.float32)[None] for name in self.feature_names]
        inputs = dict(zip(self._prompt_names, arrays + self.tile_side(features) + [coords, labels]))
        logits, scores = self._prompt.run(None, inputs)
        return logits, scores


def _size_problem(side: object, image_size: int) -> str:
    """What is wrong with a split decoder part whose image_embed input is `side` x `side` (cells) for tiles of
    `image_size` px."""
    return (f"takes image_embed of {side} x {side}, the store's {image_size} px tiles give {image_size // 16} x "
            f"{image_size // 16}: it was exported for another tile size")


def open_tile_side(decoder_path: Path, feature_names: Sequence[str], image_size: int,
                   threads: Optional[int] = None) -> Optional[TileSideDecoder]:
    """The split decoder beside a store's decoder.onnx, or None when the store has none (stores written
    before it, SAM v1) or it does not load or fit (logged; the full decoder then does everything)."""
    folder = Path(decoder_path).parent
    tile_path, prompt_path = folder / DECODER_TILE_ONNX, folder / DECODER_PROMPT_ONNX
    if not (tile_path.is_file() and prompt_path.is_file()):
        return None
    try:
        return TileSideDecoder(tile_path, prompt_path, feature_names, image_size, threads)
    except DecoderFileError as exc:
        LOGGER.warning("not using the split decoder: %s", exc)
        return None
