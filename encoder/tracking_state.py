"""SAM 2's stock video predictor fed with a store's cached features instead of images (torch; encoder process).

`SAM2VideoPredictor` (sam2 package) looks a frame's image features up in `inference_state["cached_features"]`
before it would run its image encoder (`_get_image_feature`: `.get(frame_idx, (None, None))`). `StoredFeatures`
is that mapping: its `.get` returns, for every frame of the video, what the predictor's own `forward_image` would
have returned, rebuilt from the frame's stored tile, so the predictor's code (memory encoder, memory attention,
mask decoder, object pointers, occlusion score) runs unchanged, with no subclass and no patch, and never encodes
a frame. `stored_inference_state` builds the rest of the state with exactly the keys of
`SAM2VideoPredictor.init_state` (which needs a folder of images).

What a store holds (encoder/models.Sam2Model._encode_batch) and what `forward_image` returns:

    backbone_fpn[0]   = high_res_feats_0 (32, S/4, S/4)     (the mask decoder's conv_s0 already applied)
    backbone_fpn[1]   = high_res_feats_1 (64, S/8, S/8)     (conv_s1 applied)
    backbone_fpn[2]   = image_embed - no_mem_embed (256, S/16, S/16)   (the store adds no_mem_embed when the
                        model is `directly_add_no_mem_embed`, as SAM 2's image predictor does; the video
                        predictor adds it itself on a prompt frame and uses memory on the others)
    vision_pos_enc[i] = image_encoder.neck.position_encoding(level i): sine encodings that depend only on
                        the level's height and width (sam2's PositionEmbeddingSine), so computed once

All tensors are float32 on the predictor's device with a batch axis of 1; S is the tile size (the model's
image_size). A store of float16 features gives float32 tensors of those values.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

#: Store feature names in the order of SAM 2's backbone_fpn levels (finest first).
FPN_FEATURES = ("high_res_feats_0", "high_res_feats_1", "image_embed")
#: How many frames' tensors are kept: the predictor asks for the frame it works on, object after object.
FRAMES_KEPT = 2

#: Reads the stored (C, H, W) feature maps of video frame i (its store's tile).
FeatureReader = Callable[[int], Dict[str, np.ndarray]]


class FramesNotLoaded(Sequence):
    """`inference_state["images"]` of a state fed from a store: as long as the video, but holding no image.
    Reading a frame is a bug (the predictor would encode it): RuntimeError."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        raise RuntimeError("tracking from a store never encodes a frame: its features are read from the store")


class StoredFeatures:
    """`inference_state["cached_features"]` for a video whose frame i has the stored features `read(i)`.

    `get(i, default)` returns (placeholder image (1, 3, 1, 1), backbone_out) as sam2's `_get_image_feature`
    expects (see the module), the last FRAMES_KEPT frames' tensors kept; `default` for an index outside the
    video. Assigning into it is refused (the stock predictor only assigns on a miss, which never happens)."""

    def __init__(self, predictor: Any, count: int, read: FeatureReader) -> None:
        self._predictor = predictor
        self._count = count
        self._read = read
        self._device = predictor.device
        self._kept: OrderedDict[int, Tuple[torch.Tensor, Dict[str, List[torch.Tensor]]]] = OrderedDict()
        self._positions: Optional[List[torch.Tensor]] = None
        self._image = torch.zeros((1, 3, 1, 1), dtype=torch.float32, device=self._device)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < self._count

    def get(self, index: int, default: Any = None) -> Any:
        if index not in self:
            return default
        if index not in self._kept:
            self._kept[index] = (self._image, self._backbone_out(index))
            while len(self._kept) > FRAMES_KEPT:
                self._kept.popitem(last=False)
        self._kept.move_to_end(index)
        return self._kept[index]

    def _backbone_out(self, index: int) -> Dict[str, List[torch.Tensor]]:
        stored = self._read(index)
        fpn = [torch.from_numpy(np.array(stored[name], dtype=np.float32)).to(self._device)[None]
               for name in FPN_FEATURES]
        fpn[-1] = without_no_mem_embed(self._predictor, fpn[-1])
        if self._positions is None:
            encode = self._predictor.image_encoder.neck.position_encoding
            with torch.inference_mode():
                self._positions = [encode(level).to(level.dtype) for level in fpn]
        return {"backbone_fpn": fpn, "vision_pos_enc": list(self._positions)}


def without_no_mem_embed(predictor: Any, image_embed: torch.Tensor) -> torch.Tensor:
    """The stored image embedding (1, C, H, W) as the image encoder gave it: the store holds it with SAM 2's
    `no_mem_embed` (1, 1, C) added when the model is `directly_add_no_mem_embed`."""
    if not predictor.directly_add_no_mem_embed:
        return image_embed
    return image_embed - predictor.no_mem_embed.detach().reshape(1, -1, 1, 1).to(image_embed.dtype)


def stored_inference_state(predictor: Any, count: int, read: FeatureReader, size: int) -> Dict[str, Any]:
    """A video inference state of `count` frames whose features come from `read` (frame i -> its stored maps);
    `size` the tile size in pixels (the "video" height and width, equal to the model's image_size). The keys and
    values are those of `SAM2VideoPredictor.init_state(video, offload_video_to_cpu=False,
    offload_state_to_cpu=False)`, except `images` (FramesNotLoaded) and `cached_features` (StoredFeatures)."""
    device = predictor.device
    return {
        "images": FramesNotLoaded(count),
        "num_frames": count,
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": size,
        "video_width": size,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": StoredFeatures(predictor, count, read),
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
