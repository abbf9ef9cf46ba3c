"""SAM 2's decoder split in two ONNX graphs: the tile part (what depends only on the tile's features when
no mask_input is given) run once per tile, and the prompt part run per click (no QGIS; torch).

The tile part computes, from image_embed (1, 256, h, w) with the no-mask dense embedding added, the
three projections of layer 0 of the two-way transformer that read only the image (the token-to-image keys
and values, the image-to-token queries: (1, 8, h*w, 16) each, split into heads), about 22 % of the decoder's FLOPs. The
prompt part takes them besides the store's features and is the same
arithmetic as SAM 2's `MaskDecoder.predict_masks` (sam2/modeling/sam/mask_decoder.py, transformer.py)
with those projections read rather than computed; it has no mask_input (refinement prompts use the full
decoder.onnx).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional

#: Outputs of the tile part, inputs of the prompt part (besides the high-resolution maps and the points).
TILE_OUTPUTS = ("cross_keys", "cross_values", "image_queries")


def _attend(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sam2's `Attention.forward` from already projected q, k, v: (B, N, C_internal), or (1, heads, N,
    C_internal / heads) already split into heads (the tile side, shared by the batch: MatMul broadcasts)."""
    heads = attention.num_heads
    q, k, v = (x if x.dim() == 4 else attention._separate_heads(x, heads) for x in (q, k, v))
    out = functional.scaled_dot_product_attention(q, k, v)
    return attention.out_proj(attention._recombine_heads(out))


def _image_tokens(prompt_encoder: nn.Module, image_embed: torch.Tensor) -> torch.Tensor:
    """(1, h*w, 256) image tokens with the no-mask dense embedding added, as in `predict_masks`."""
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    return (image_embed + dense).flatten(2).permute(0, 2, 1)


def _attention(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _attend(attention, attention.q_proj(q), attention.k_proj(k), attention.v_proj(v))


class DecoderTilePart(nn.Module):
    """image_embed (1, 256, h, w) -> cross keys, cross values, image queries (TILE_OUTPUTS), split into the
    attention's heads: (1, heads, h*w, 128 / heads) each (SAM 2: 8 heads of 16)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = net.sam_prompt_encoder
        self.first_layer = net.sam_mask_decoder.transformer.layers[0]

    def forward(self, image_embed: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        tokens = _image_tokens(self.prompt_encoder, image_embed)
        pe = self.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        to_image, to_token = self.first_layer.cross_attn_token_to_image, self.first_layer.cross_attn_image_to_token
        heads = to_image.num_heads
        return (to_image._separate_heads(to_image.k_proj(tokens + pe), heads),
                to_image._separate_heads(to_image.v_proj(tokens), heads),
                to_token._separate_heads(to_token.q_proj(tokens + pe), to_token.num_heads))


class DecoderPromptPart(nn.Module):
    """The rest of the decoder for B objects on one tile: (image_embed (1, 256, h, w), high_res_feats_0,
    high_res_feats_1, TILE_OUTPUTS, point_coords (B, N, 2), point_labels (B, N)) -> mask_logits
    (B, M, 4h, 4w), scores (B, M)."""

    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__()
        from .models import _embed_points

        self._embed_points = _embed_points
        self.prompt_encoder = net.sam_prompt_encoder
        self.mask_decoder = net.sam_mask_decoder
        self.image_size = image_size

    def forward(self, image_embed: torch.Tensor, high_res_0: torch.Tensor, high_res_1: torch.Tensor,
                cross_keys: torch.Tensor, cross_values: torch.Tensor, image_queries: torch.Tensor,
                point_coords: torch.Tensor, point_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        decoder = self.mask_decoder
        sparse = self._embed_points(self.prompt_encoder, point_coords, point_labels, self.image_size)
        heads = [decoder.obj_score_token.weight] if decoder.pred_obj_scores else []
        output_tokens = torch.cat([*heads, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
        pe = self.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        image_tokens = _image_tokens(self.prompt_encoder, image_embed)
        queries, keys = self._first_layer(tokens, image_tokens, cross_keys, cross_values, image_queries)
        hs, keys = self._other_layers(queries, keys, tokens, pe)
        return self._masks(hs, keys, high_res_0, high_res_1)

    def _first_layer(self, tokens: torch.Tensor, image_tokens: torch.Tensor, cross_keys: torch.Tensor,
                     cross_values: torch.Tensor, image_queries: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`TwoWayAttentionBlock.forward` of layer 0 (skip_first_layer_pe) with the tile's projections read."""
        layer = self.mask_decoder.transformer.layers[0]
        queries = layer.norm1(_attention(layer.self_attn, tokens, tokens, tokens))
        attn = layer.cross_attn_token_to_image
        queries = layer.norm2(queries + _attend(attn, attn.q_proj(queries + tokens), cross_keys, cross_values))
        queries = layer.norm3(queries + layer.mlp(queries))
        attn = layer.cross_attn_image_to_token
        q = queries + tokens
        keys = layer.norm4(image_tokens + _attend(attn, image_queries, attn.k_proj(q), attn.v_proj(queries)))
        return queries, keys

    def _other_layers(self, queries: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor,
                      pe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The rest of `TwoWayTransformer.forward`: layers 1.., the final token-to-image attention."""
        transformer = self.mask_decoder.transformer
        for layer in transformer.layers[1:]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=pe)
        attn_out = _attention(transformer.final_attn_token_to_image, queries + tokens, keys + pe, keys)
        return transformer.norm_final_attn(queries + attn_out), keys

    def _masks(self, hs: torch.Tensor, keys: torch.Tensor, high_res_0: torch.Tensor,
               high_res_1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The end of `MaskDecoder.predict_masks`: upscaling with the high-resolution maps, hypernetworks."""
        decoder = self.mask_decoder
        s = 1 if decoder.pred_obj_scores else 0
        side = self.image_size // 16
        src = keys.transpose(1, 2).reshape(keys.shape[0], -1, side, side)
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        upscaled = act2(dc2(act1(ln1(dc1(src) + high_res_1))) + high_res_0)
        hyper_in = torch.stack([mlp(hs[:, s + 1 + i, :]) for i, mlp in
                                enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, decoder.iou_prediction_head(hs[:, s, :])


def export_split_decoder(net: nn.Module, image_size: int, tile_path: Path, prompt_path: Path) -> None:
    """Write the tile part and the prompt part as ONNX (opset 17, same export settings as decoder.onnx):
    the prompt part takes any number of objects and points. Only for SAM 2 / 2.1 nets (high-res features)."""
    side, names = image_size // 16, list(TILE_OUTPUTS)
    tile_part, prompt_part = DecoderTilePart(net).eval(), DecoderPromptPart(net, image_size).eval()
    embed = torch.zeros(1, 256, side, side)
    with torch.inference_mode():
        tile_outputs = tile_part(embed)
    high_res = [torch.zeros(1, 32, 4 * side, 4 * side), torch.zeros(1, 64, 2 * side, 2 * side)]
    points = [torch.tensor([[[9.5, 9.5], [0.0, 0.0]]]), torch.tensor([[1, -1]], dtype=torch.int64)]
    prompt_names = ["image_embed", "high_res_feats_0", "high_res_feats_1", *names, "point_coords", "point_labels"]
    objects = {0: "objects", 1: "points"}
    _export(tile_part, (embed,), tile_path, ["image_embed"], names, {})
    _export(prompt_part, (embed, *high_res, *tile_outputs, *points), prompt_path, prompt_names,
            ["mask_logits", "scores"], {"point_coords": objects, "point_labels": objects, "mask_logits": {0: "objects"},
             "scores": {0: "objects"}})


def _export(module: nn.Module, inputs: tuple, path: Path, input_names: List[str], output_names: List[str],
            dynamic_axes: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shape asserts in the packages' code
        torch.onnx.export(module, tuple(t.clone() for t in inputs), str(tmp), input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes or None, opset_version=17,
                          do_constant_folding=True, dynamo=False)
    tmp.replace(path)
