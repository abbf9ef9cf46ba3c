"""SAM 2 / SAM 2.1 and SAM v1 behind one small interface (torch; imported only by the encoder process
and by tests, never by QGIS's own Python).

    model = build_model("sam2.1_hiera_t", checkpoint=None, seed=0)  # random weights
    features = model.encode(tiles)                 # (B, S, S, 3) uint8 -> [ {name: (C, H, W) float32} ]
    result = model.decode(features[0], prompts)    # masks, scores, low-res logits

Prompt coordinates are continuous tile pixel coordinates (x = column, y = row; (0, 0) is the top-left
corner of the tile's top-left pixel). Only this module touches the packages' model internals.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..core.catalogue import model_spec
from ..core.defaults import DEFAULT_TILE_SIZE
from ..core.errors import CheckpointError
from ..core.logger import LOGGER
from ..core.mask_decoding import (
    DECODER_EXTRA_INPUTS,
    DecodeResult,
    DecoderSettings,
    Prompts,
    decoder_inputs,
    postprocess,
)

#: Hyperparameters of the official SAM v1 image encoders (segment_anything/build_sam.py).
_SAM1_ENCODERS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def select_device(requested: str = "auto") -> str:
    """'auto' picks CUDA, then Apple MPS, then CPU; an explicit device that is not there is an error."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    available = {"cpu": True, "cuda": cuda, "mps": mps}
    base = requested.split(":")[0]
    if base not in available:
        raise ValueError(f"unknown device '{requested}'; use auto, cpu, cuda, cuda:N or mps")
    if not available[base]:
        raise ValueError(f"device '{requested}' is not available on this machine; use --device auto")
    return requested


@dataclass(frozen=True)
class FeatureSpec:
    """One stored feature map: its name and (C, H, W) shape."""

    name: str
    shape: Tuple[int, int, int]


@dataclass
class SegmentModel:
    """Common part of the adapters. `image_size` is the square tile size the model takes."""

    name: str
    family: str
    image_size: int
    net: nn.Module
    device: str = "cpu"
    decoder_settings: DecoderSettings = field(default_factory=DecoderSettings)
    weights_sha256: Optional[str] = None
    # Class attributes, not dataclass fields: the family's decoder graph class, and its instance once built.
    _graph_class = None
    _graph = None

    # -- interface -------------------------------------------------------------------------
    def feature_specs(self) -> List[FeatureSpec]:
        raise NotImplementedError

    def encode(self, tiles: np.ndarray) -> List[Dict[str, np.ndarray]]:
        """(B, S, S, 3) uint8 RGB tiles -> one {name: (C, H, W) float32} per tile."""
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        with torch.inference_mode():
            maps = self._encode_batch(self._preprocess(batch))
        arrays = {name: tensor.float().cpu().numpy() for name, tensor in maps.items()}
        return [{name: arrays[name][i] for name in arrays} for i in range(len(tiles))]

    def decode(self, features: Dict[str, np.ndarray], prompts: Prompts,
               multimask: bool = True) -> DecodeResult:
        """Masks at tile resolution for one object's prompts, decoded with torch."""
        inputs = self.decoder_inputs(features, prompts)
        graph = self.decoder_graph()
        with torch.inference_mode():
            outputs = graph(*(torch.from_numpy(np.array(a)).to(self.device) for a in inputs))
        all_logits, all_scores = (o.float().cpu().numpy() for o in outputs)
        return postprocess(all_logits[0], all_scores[0], multimask, self.decoder_settings,
                           self.image_size)

    # -- decoder graph shared by torch decoding and the ONNX export ------------------------
    def decoder_graph(self) -> nn.Module:
        """The family's prompt encoder + mask decoder (`_graph_class`), built once per model."""
        if self._graph is None:
            self._graph = self._graph_class(self.net, self.image_size).eval()
        return self._graph

    def feature_names(self) -> List[str]:
        return [spec.name for spec in self.feature_specs()]

    def decoder_inputs(self, features: Dict[str, np.ndarray], prompts: Prompts) -> List[np.ndarray]:
        return decoder_inputs(self.family, self.feature_names(), features, prompts, self.image_size)

    def decoder_input_names(self) -> List[str]:
        return self.feature_names() + list(DECODER_EXTRA_INPUTS)

    def export_decoder_onnx(self, path: Path) -> None:
        """Write the prompt encoder + mask decoder as ONNX (opset 17): any number of objects per call (the
        batch axis of the prompts and outputs; the tile's features are shared), any number of points."""
        graph = self.decoder_graph().cpu()
        dummy = Prompts(points=np.array([[10.0, 10.0]]), labels=np.array([1]))
        features = {spec.name: np.zeros(spec.shape, dtype=np.float32)
                    for spec in self.feature_specs()}
        inputs = tuple(torch.from_numpy(a) for a in self.decoder_inputs(features, dummy))
        names = self.decoder_input_names()
        tmp = path.with_name(path.name + ".tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shape asserts in the packages' code
            torch.onnx.export(
                graph, inputs, str(tmp), input_names=names, output_names=["mask_logits", "scores"],
                dynamic_axes={"point_coords": {0: "objects", 1: "points"}, "point_labels": {0: "objects", 1: "points"},
                              "mask_input": {0: "objects"}, "has_mask_input": {0: "objects"},
                              "mask_logits": {0: "objects"}, "scores": {0: "objects"}},
                opset_version=17, do_constant_folding=True, dynamo=False,
            )
        tmp.replace(path)
        if self.device != "cpu":
            self.decoder_graph().to(self.device)

    def _preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_batch(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def _embed_points(prompt_encoder: nn.Module, coords: torch.Tensor, labels: torch.Tensor,
                  image_size: int) -> torch.Tensor:
    """Sparse embeddings of points already padded and with box corners as labels 2 and 3.

    Same arithmetic as the packages' prompt encoders (shift to pixel centre, Fourier features, per-label
    learned embedding; -1 = padding point), written with masks so it exports to ONNX.
    """
    embedding = prompt_encoder.pe_layer.forward_with_coords(coords + 0.5, (image_size, image_size))
    is_pad = (labels == -1).unsqueeze(-1).to(embedding.dtype)
    embedding = embedding * (1 - is_pad) + prompt_encoder.not_a_point_embed.weight * is_pad
    for label, table in enumerate(prompt_encoder.point_embeddings):
        embedding = embedding + table.weight * (labels == label).unsqueeze(-1).to(embedding.dtype)
    return embedding


def _dense_embedding(prompt_encoder: nn.Module, mask_input: torch.Tensor,
                     has_mask: torch.Tensor) -> torch.Tensor:
    masked = prompt_encoder.mask_downscaling(mask_input)
    no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(masked)
    weight = has_mask.reshape(-1, 1, 1, 1)
    return masked * weight + no_mask * (1 - weight)


class _DecoderGraph(nn.Module):
    """A family's prompt encoder and mask decoder as one module that traces to ONNX; the prompts' sparse and
    dense embeddings are computed alike for every family (`_prompt_embeddings`)."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module, image_size: int) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size

    def _prompt_embeddings(self, point_coords: torch.Tensor, point_labels: torch.Tensor, mask_input: torch.Tensor,
                           has_mask_input: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(sparse, dense) embeddings of a batch of prompts (see `_embed_points`, `_dense_embedding`)."""
        sparse = _embed_points(self.prompt_encoder, point_coords, point_labels, self.image_size)
        return sparse, _dense_embedding(self.prompt_encoder, mask_input, has_mask_input)


# -- SAM 2 / SAM 2.1 --------------------------------------------------------------------------
class _Sam2DecoderGraph(_DecoderGraph):
    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__(net.sam_prompt_encoder, net.sam_mask_decoder, image_size)

    def forward(self, image_embed: torch.Tensor, high_res_0: torch.Tensor, high_res_1: torch.Tensor,
                point_coords: torch.Tensor, point_labels: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self._prompt_embeddings(point_coords, point_labels, mask_input, has_mask_input)
        # one tile, many objects: the image features are shared by every prompt of the batch
        image_embed = image_embed.expand(point_coords.shape[0], -1, -1, -1)
        masks, scores, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, repeat_image=False,
            high_res_features=[high_res_0, high_res_1])
        return masks, scores


class Sam2Model(SegmentModel):
    """SAM 2 and SAM 2.1 (sam2 package): features image_embed + two high-resolution maps."""

    _graph_class = _Sam2DecoderGraph

    def feature_specs(self) -> List[FeatureSpec]:
        s = self.image_size
        return [FeatureSpec("image_embed", (256, s // 16, s // 16)),
                FeatureSpec("high_res_feats_0", (32, s // 4, s // 4)),
                FeatureSpec("high_res_feats_1", (64, s // 8, s // 8))]

    def _preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        images = batch.permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(_IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def _encode_batch(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        net = self.net
        backbone_out = net.forward_image(images)
        _, vision_feats, _, feat_sizes = net._prepare_backbone_features(backbone_out)
        if net.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + net.no_mem_embed
        batch = images.shape[0]
        maps = [feat.permute(1, 2, 0).reshape(batch, -1, *size)
                for feat, size in zip(vision_feats, feat_sizes)]
        return {"image_embed": maps[2], "high_res_feats_0": maps[0], "high_res_feats_1": maps[1]}


# -- SAM v1 ---------------------------------------------------------------------------------------
class _Sam1DecoderGraph(_DecoderGraph):
    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__(net.prompt_encoder, net.mask_decoder, image_size)

    def forward(self, image_embed: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        sparse, dense = self._prompt_embeddings(point_coords, point_labels, mask_input, has_mask_input)
        masks, scores = self.mask_decoder.predict_masks(
            image_embeddings=image_embed, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return masks, scores


class Sam1Model(SegmentModel):
    """The original SAM (segment_anything package): one 256-channel feature map."""

    _graph_class = _Sam1DecoderGraph

    def feature_specs(self) -> List[FeatureSpec]:
        s = self.image_size // 16
        return [FeatureSpec("image_embed", (256, s, s))]

    def _preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        images = batch.permute(0, 3, 1, 2).float()
        return (images - self.net.pixel_mean) / self.net.pixel_std

    def _encode_batch(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"image_embed": self.net.image_encoder(images)}


# -- building ---------------------------------------------------------------------------------------
def _sam2_size_overrides(image_size: int) -> List[str]:
    """Hydra overrides that build a SAM 2 config for `image_size` px tiles (none at the native size)."""
    return [] if image_size == DEFAULT_TILE_SIZE else [f"++model.image_size={image_size}"]


def _build_sam2_net(config: str, image_size: int, device: str) -> nn.Module:
    from sam2.build_sam import build_sam2

    return build_sam2(config, ckpt_path=None, device=device, mode="eval",
                      hydra_overrides_extra=_sam2_size_overrides(image_size))


def build_video_predictor(model: SegmentModel) -> nn.Module:
    """sam2's stock `SAM2VideoPredictor` for `model` (a SAM 2 / 2.1 adapter): the same config and image size as
    `model.net` was built with, and its very weights (its state dict loaded strictly, so seeded random weights and
    checkpoints alike are identical), on `model.device`, in eval mode. ValueError for a SAM v1 model."""
    from sam2.build_sam import build_sam2_video_predictor

    if model.family != "sam2":
        raise ValueError(f"tracking needs SAM 2 or SAM 2.1; {model.name} has no video memory")
    predictor = build_sam2_video_predictor(model_spec(model.name).config, ckpt_path=None, device="cpu",
                                           mode="eval", hydra_overrides_extra=_sam2_size_overrides(model.image_size))
    predictor.load_state_dict(model.net.state_dict(), strict=True)
    return predictor.to(model.device).eval()


def _build_sam1_net(config: str, image_size: int) -> nn.Module:
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    encoder = _SAM1_ENCODERS[config]
    embedding = image_size // 16
    net = Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=16, mlp_ratio=4, qkv_bias=True, use_rel_pos=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), window_size=14, out_chans=256, **encoder),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(embedding, embedding),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)),
    )
    return net.eval()


def build_model(name: str, checkpoint: Optional[Path] = None, seed: Optional[int] = 0,
                device: str = "cpu", image_size: int = DEFAULT_TILE_SIZE) -> SegmentModel:
    """Build a model from its package's config; weights from `checkpoint`, or seeded random weights.

    `image_size` other than the native DEFAULT_TILE_SIZE (1024) builds the same architecture for smaller tiles
    (tests, quick demos).
    """
    spec = model_spec(name)
    if image_size % 64:
        raise ValueError(f"tile size must be a multiple of 64, got {image_size}")
    if checkpoint is None and seed is not None:
        torch.manual_seed(seed)
    if spec.family == "sam2":
        net = _build_sam2_net(spec.config, image_size, "cpu")
        settings = DecoderSettings.from_sam2(net.sam_mask_decoder)
        model_class = Sam2Model
    else:
        net = _build_sam1_net(spec.config, image_size)
        settings = DecoderSettings()
        model_class = Sam1Model
    if checkpoint is not None:
        _load_weights(net, checkpoint)
    net = net.to(device).eval()
    return model_class(name=name, family=spec.family, image_size=image_size, net=net, device=device,
                       decoder_settings=settings)


def _load_weights(net: nn.Module, checkpoint: Path) -> None:
    from .checkpoints import load_state_dict

    state = load_state_dict(Path(checkpoint))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing:
        raise CheckpointError(
            f"checkpoint '{checkpoint}' does not fit this model ({len(missing)} weights missing, "
            f"e.g. {missing[0]}); choose the model it was trained for with --model")
    if unexpected:
        LOGGER.info("checkpoint %s: %d extra weights ignored", checkpoint, len(unexpected))

