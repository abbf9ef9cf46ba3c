"""A store's exported decoder file (`decoder.onnx`): opening it in ONNX Runtime and checking that it fits
the store's features. Part of the store contract, used by the encoder (which exports and verifies it)
and the interactive stage (which runs it). No QGIS, no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

from .errors import QuickSamError, StoreError
from .mask_decoding import DECODER_EXTRA_INPUTS
from .store_layout import DECODER_PROMPT_ONNX, DECODER_TILE_ONNX

if TYPE_CHECKING:
    from onnxruntime import InferenceSession


class DecoderFileError(StoreError):
    """A store's decoder.onnx is missing, does not load, or does not fit the store's tiles; `problem` says
    what, in a few words, and the message also names the file and the fix."""

    def __init__(self, onnx_path: Path, problem: str) -> None:
        super().__init__(f"the decoder '{onnx_path}' {problem}; re-run the same 'quicksam encode' command to "
                         "export it again, or encode the raster again into a new folder")
        self.problem = problem


def _short(exc: BaseException, limit: int = 160) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def open_decoder_session(onnx_path: Path, threads: Optional[int] = None) -> InferenceSession:
    """An ONNX Runtime session of `onnx_path` on the best available device. QuickSamError when onnxruntime
    is not installed; DecoderFileError when the file is missing or ONNX Runtime cannot load it (truncated,
    not ONNX, an operator it lacks)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise QuickSamError(
            "the decoder needs onnxruntime, which this Python (QGIS's) cannot import; install it for "
            "the Python QGIS uses (README, 'Installing into QGIS') and restart QGIS") from exc

    if not Path(onnx_path).is_file():
        raise DecoderFileError(onnx_path, "is missing")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # No busy-waiting between operators: inside QGIS the GUI thread shares the CPU with the decoder,
    # and spinning threads would slow it (and the decoder) down; costs ~3 ms per decode when idle.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [p for p in ("CUDAExecutionProvider", "CoreMLExecutionProvider",
                             "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no other base
        raise DecoderFileError(onnx_path, f"cannot be loaded by ONNX Runtime ({_short(exc)})") from None


def _dims(shape: Sequence) -> str:
    return " x ".join(str(d) for d in shape)


def _differs(declared: Sequence, wanted: Sequence[int]) -> bool:
    """True when a graph's shape cannot take `wanted` (symbolic dimensions take anything)."""
    return len(declared) != len(wanted) or any(isinstance(d, int) and d != w for d, w in zip(declared, wanted))


def session_fit_problem(session: InferenceSession, feature_shapes: Mapping[str, Sequence[int]],
                        image_size: int) -> Optional[str]:
    """None when the decoder graph takes the store's features ((C, H, W) per name, a batch axis added)
    and (1, L, L) mask inputs of `image_size` px tiles (L = image_size / 4) and gives 2 outputs; else what
    does not fit (e.g. a decoder exported for another tile size)."""
    inputs = {arg.name: list(arg.shape) for arg in session.get_inputs()}
    for name in (*feature_shapes, *DECODER_EXTRA_INPUTS):
        if name not in inputs:
            return f"has no input '{name}' (its inputs: {', '.join(inputs)}): it is not this store's decoder"
    for name, shape in feature_shapes.items():
        declared = inputs[name]
        if _differs(declared, [1, *shape]):
            return (f"takes {name} of {_dims(declared[1:])}, the store's tiles hold {_dims(shape)}: it was "
                    "exported for another tile size or model")
    side = image_size // 4
    if _differs(inputs["mask_input"][1:], [1, side, side]):
        return (f"takes mask_input of {_dims(inputs['mask_input'][2:])}, the store's {image_size} px tiles need "
                f"{side} x {side}: it was exported for another tile size")
    outputs = session.get_outputs()
    if len(outputs) != 2:
        return f"has {len(outputs)} outputs, a QuickSAM decoder has 2 (mask_logits, scores)"
    logits = list(outputs[0].shape)
    if len(logits) < 2 or _differs(logits[-2:], [side, side]):
        return (f"gives mask logits of {_dims(logits[-2:])}, the store's {image_size} px tiles need {side} x "
                f"{side}: it was exported for another tile size")
    return None


def decoder_file_problem(onnx_path: Path, feature_shapes: Mapping[str, Sequence[int]],
                         image_size: int) -> Optional[str]:
    """None when `onnx_path` loads in ONNX Runtime and fits the features (`session_fit_problem`), else
    what is wrong ("is missing", "cannot be loaded ...", "takes ..."). QuickSamError without onnxruntime."""
    try:
        session = open_decoder_session(onnx_path, threads=1)
    except DecoderFileError as exc:
        return exc.problem
    problem = session_fit_problem(session, feature_shapes, image_size)
    return None if problem is None else f"does not fit the store's tiles: it {problem}"


def split_decoder_problem(tile_path: Path, prompt_path: Path,
                          feature_shapes: Mapping[str, Sequence[int]]) -> Optional[str]:
    """None when neither part of a split decoder exists (stores written before it, SAM v1: decoder.onnx does
    everything) or both load in ONNX Runtime and take the store's first feature map ((C, H, W) in
    `feature_shapes`; not checked while it is empty); else the file's name and what is wrong
    ("decoder_prompt.onnx cannot be loaded ..."). QuickSamError without onnxruntime."""
    paths = (Path(tile_path), Path(prompt_path))
    if not any(path.exists() for path in paths):
        return None
    first = next(iter(feature_shapes.items()), None)   # None before the model is built (a level just added)
    for path in paths:
        try:
            declared = list(open_decoder_session(path, threads=1).get_inputs()[0].shape)
        except DecoderFileError as exc:
            return f"{path.name} {exc.problem}"
        if first is not None and _differs(declared, [1, *first[1]]):
            return (f"{path.name} takes {first[0]} of {_dims(declared[1:])}, the store's tiles hold "
                    f"{_dims(first[1])}: it was exported for another tile size or model")
    return None


def store_split_files_problem(root: Path, feature_shapes: Mapping[str, Sequence[int]]) -> Optional[str]:
    """`split_decoder_problem` of the split decoder files in the store folder `root` (None: both fine, or a
    store written before the split decoder, without them)."""
    return split_decoder_problem(Path(root) / DECODER_TILE_ONNX, Path(root) / DECODER_PROMPT_ONNX, feature_shapes)
