"""The decoder's arithmetic floor: SAM 2's prompt encoder + mask decoder FLOPs per prompt over this CPU's GEMM rate.

    from floor import decoder_flops_per_prompt, gemm_rates, floor_ms
    flops = decoder_flops_per_prompt(model)        # counted once, on the graph decoder.onnx is exported from
    rate = gemm_rates(threads=2)["median_gflops"]  # measured now, the decoder's thread count (or GemmMeter)
    floor_ms(flops["total_flops"], rate)           # ms per prompt if every FLOP ran at that rate

Method:
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add; matmuls, linear layers,
  convolutions and transposed convolutions; elementwise work, norms and activations count 0) over one
  forward of `model.decoder_graph()` (the module `export_decoder_onnx` traces: prompt encoder + mask decoder)
  with the stored feature shapes and one foreground point (plus SAM 2's padding point), no mask input.
  Attention runs on PyTorch's math backend while counting, so its two matmuls are counted too (the fused CPU
  kernel is not in the counter's table). The graph computes all of SAM 2's mask outputs (single-mask and the
  three multimask ones, the hypernetwork product being ~0.5 % of the total); the engine picks one after it.
- What depends only on the tile: the same forward under `DependenceFlops`, a dispatch mode that tags each
  intermediate with what it was computed from (tile features, prompt points) and adds each op's FLOPs (the
  counter's own formulas) to the bucket of its inputs' tags. With no mask input, `mask_input`/`has_mask_input`
  are constants of the click path, so the dense embedding is too; the image-side projections of the
  transformer's first layer then read only the tile.
- GEMM rate: float32 `torch.mm` on the shapes that carry most of the decoder's FLOPs at 1024 px tiles
  (`DECODER_GEMM_SHAPES`), `torch.set_num_threads(threads)`, rounds of all shapes after a warm-up;
  GFLOP/s = FLOPs of a round / its seconds (`GemmMeter`; a benchmark interleaves the rounds with what it
  measures, so both see the same load). Both the median and the best round are returned. The floor uses
  the median: the decoder figures it is held against are medians taken under the same (shared, noisy)
  load, so a best-round rate would make the ratio measure load spikes rather than the decoder; `floor_ms`
  at the best rate is the stricter bound and is reported next to it. When the median round is much slower than
  the best (the machine was shared: other processes took the cores for part of the run) every ratio to the
  floor is unreliable, and bench/decode.py says so.
"""

from __future__ import annotations

import statistics
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np

#: Dependence tags: computed from the tile's features, from the prompt's points (both = per prompt).
TILE, PROMPT = 1, 2
#: (M, K, N) float32 GEMMs standing for the decoder at 1024 px tiles: the 256 -> 128 image-side projections
#: on 64 x 64 image tokens, the 128 -> 256 output projection, and the two transposed convolutions of the
#: upscaling as GEMMs (256 -> 64 x 2 x 2 on 64 x 64, 64 -> 32 x 2 x 2 on 128 x 128).
DECODER_GEMM_SHAPES: Tuple[Tuple[int, int, int], ...] = ((4096, 256, 128), (4096, 128, 256),
                                                         (4096, 256, 256), (16384, 64, 128))


def count_flops(module, inputs: Sequence) -> int:
    """FLOPs (2 per multiply-add) of one `module(*inputs)` under FlopCounterMode, attention on the math
    backend (so its matmuls are counted), without autograd."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(*inputs)
    return int(counter.get_total_flops())


def flops_by_module(module, inputs: Sequence, depth: int = 4, smallest: int = 1_000_000) -> Dict[str, int]:
    """FLOPs per submodule (dotted names below the module, up to `depth` levels, those of at least `smallest`
    FLOPs), as FlopCounterMode attributes them (by forward hooks: a submodule called through another method,
    like the mask decoder's `predict_masks`, is not listed, its children are); a parent's figure includes its
    children's."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=depth + 1)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(*inputs)
    counts = {}
    for name, per_op in counter.get_flop_counts().items():
        parts = name.split(".")
        if name != "Global" and 1 < len(parts) <= depth + 1 and sum(per_op.values()) >= smallest:
            counts[".".join(parts[1:])] = int(sum(per_op.values()))
    return counts


def _dependence_mode_class():
    """DependenceFlops, defined lazily so importing this module does not import torch."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import flop_registry

    class DependenceFlops(TorchDispatchMode):
        """Counts FLOPs per dependence tag (an OR of TILE and PROMPT; 0 = constants and weights).

        Each op's outputs get the OR of its tensor inputs' tags; composite ops are decomposed first (as
        FlopCounterMode does) so the counted ops are the same. Tensors are held until the mode is dropped,
        so their ids stay unique.
        """

        def __init__(self) -> None:
            super().__init__()
            self.tags: Dict[int, int] = {}
            self.held: List = []
            self.flops: Dict[int, int] = {}

        def tag(self, tensor, bits: int) -> None:
            self.tags[id(tensor)] = bits
            self.held.append(tensor)

        def _bits(self, values) -> int:
            bits = 0
            for value in tree_leaves(values):
                bits |= self.tags.get(id(value), 0)
            return bits

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            bits = self._bits((args, kwargs))
            formula = flop_registry.get(func._overloadpacket)
            out = NotImplemented
            if formula is None:
                with self:
                    out = func.decompose(*args, **kwargs)
            if out is NotImplemented:
                out = func(*args, **kwargs)
                if formula is not None:
                    self.flops[bits] = self.flops.get(bits, 0) + int(formula(*args, **kwargs, out_val=out))
            for value in tree_leaves(out):
                if hasattr(value, "shape"):
                    self.tag(value, bits | self.tags.get(id(value), 0))
            return out

    return DependenceFlops


def flops_by_dependence(module, inputs: Sequence, input_tags: Sequence[int]) -> Dict[int, int]:
    """FLOPs of one `module(*inputs)` split by what they depend on: {tag: flops}, tag an OR of TILE and PROMPT
    given per input in `input_tags` (0 = a constant). Same formulas and ops as `count_flops`."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mode = _dependence_mode_class()()
    for tensor, bits in zip(inputs, input_tags):
        mode.tag(tensor, bits)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), mode:
        module(*inputs)
    return dict(mode.flops)


def decoder_graph_inputs(model, point: Tuple[float, float] = None) -> Tuple[List, List[int]]:
    """The decoder graph's inputs for one foreground point (tile pixels, default the tile's centre) on zero
    features of the stored shapes, no mask input; and each input's dependence tag for the click path."""
    import torch

    from quicksam.core.mask_decoding import Prompts

    features = {spec.name: np.zeros(spec.shape, np.float32) for spec in model.feature_specs()}
    centre = point or (model.image_size / 2, model.image_size / 2)
    arrays = model.decoder_inputs(features, Prompts(points=[centre], labels=[1]))
    count = len(features)
    tags = [TILE] * count + [PROMPT, PROMPT, 0, 0]  # mask_input / has_mask_input: zeros on a first click
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays], tags


def decoder_flops_per_prompt(model) -> Dict[str, object]:
    """SAM 2's prompt encoder + mask decoder FLOPs for one foreground point (see the module docstring).

    `model`: an encoder.models.SegmentModel (e.g. build_model('sam2.1_hiera_t')). Returns total_flops,
    tile_only_flops (computed from the tile's features alone), constant_flops (from weights and the absent
    mask only), per_prompt_flops (the rest), their fractions, by_module_flops, and `dependence_total_matches`
    (the split adds up to the counter's total).
    """
    graph = model.decoder_graph()
    inputs, tags = decoder_graph_inputs(model)
    total = count_flops(graph, inputs)
    split = flops_by_dependence(graph, inputs, tags)
    tile_only, constant = split.get(TILE, 0), split.get(0, 0)
    per_prompt = sum(flops for bits, flops in split.items() if bits & PROMPT)
    return {
        "total_flops": total, "tile_only_flops": tile_only, "constant_flops": constant,
        "per_prompt_flops": per_prompt,
        "tile_only_fraction": round(tile_only / total, 4),
        "cacheable_fraction": round((tile_only + constant) / total, 4),
        "dependence_total_matches": tile_only + constant + per_prompt == total,
        "by_module_flops": flops_by_module(graph, inputs),
        "prompt": "one foreground point (+ SAM 2's padding point), no mask input, all mask outputs of the graph",
        "feature_shapes": {spec.name: list(spec.shape) for spec in model.feature_specs()},
    }


class GemmMeter:
    """Float32 GEMM rounds on `shapes` with `threads` torch threads, timed one at a time so a benchmark can
    interleave them with what it measures (both then see the same load). One round = one `torch.mm` per
    (M, K, N); `rates()` = FLOPs of a round / its seconds over every round so far."""

    def __init__(self, threads: int, shapes: Sequence[Tuple[int, int, int]] = DECODER_GEMM_SHAPES,
                 warmup: int = 3) -> None:
        import torch

        generator = torch.Generator().manual_seed(0)
        self.threads = threads
        self.shapes = [tuple(s) for s in shapes]
        self.flops = sum(2 * m * k * n for m, k, n in self.shapes)
        self._pairs = [(torch.rand(m, k, generator=generator), torch.rand(k, n, generator=generator),
                        torch.empty(m, n)) for m, k, n in self.shapes]
        self.seconds: List[float] = []
        for _ in range(warmup):
            self._timed()

    def _timed(self) -> float:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            started = time.perf_counter()
            for a, b, out in self._pairs:
                torch.mm(a, b, out=out)
            return time.perf_counter() - started
        finally:
            torch.set_num_threads(before)

    def round(self) -> float:
        """Time one round (seconds) and keep it."""
        self.seconds.append(self._timed())
        return self.seconds[-1]

    def rates(self) -> Dict[str, object]:
        """median_gflops, best_gflops (GFLOP/s, 2 FLOPs per multiply-add) over the rounds so far, with the
        shapes, number of rounds and threads. ValueError before any round."""
        if not self.seconds:
            raise ValueError("no GEMM round was timed yet")
        return {"median_gflops": round(self.flops / statistics.median(self.seconds) / 1e9, 2),
                "best_gflops": round(self.flops / min(self.seconds) / 1e9, 2),
                "shapes_mkn": [list(s) for s in self.shapes], "rounds": len(self.seconds), "threads": self.threads}


def gemm_rates(threads: int, repeats: int = 30, shapes: Sequence[Tuple[int, int, int]] = DECODER_GEMM_SHAPES,
               warmup: int = 3) -> Dict[str, object]:
    """`GemmMeter.rates()` after `repeats` back-to-back rounds (after `warmup` untimed ones)."""
    meter = GemmMeter(threads, shapes, warmup)
    for _ in range(repeats):
        meter.round()
    return meter.rates()


def gemm_gflops(threads: int, statistic: str = "median", repeats: int = 30) -> float:
    """`gemm_rates(threads, repeats)`'s median (default) or best GFLOP/s."""
    return float(gemm_rates(threads, repeats)[f"{statistic}_gflops"])


def floor_ms(flops: float, gflops: float) -> float:
    """Milliseconds `flops` take at `gflops` GFLOP/s (the arithmetic floor: no memory traffic, no overhead)."""
    return flops / (gflops * 1e9) * 1000.0
