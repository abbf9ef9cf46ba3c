"""The tile codec of format version 4: a tile's features compressed inside its `tiles/<id>.npy` (no QGIS, no torch).

A version-4 store says `features.codec` = "byteplanes-zlib" (CODEC): each tile file is then a flat uint8 .npy
whose bytes are a payload, still no pickle, and the tile log's CRC-32 is of those bytes (as for a raw tile: the
CRC-32 of the .npy's array bytes), so a tile is verified without decompressing it. Stores without a codec
(versions 1 to 3, and version 4 written with none) keep the raw flat float array, memory-mapped.

Payload: HEADER (magic b"QSAMTILE", payload version 1, section count), one SECTION header per section (method,
bytes once decoded, bytes stored), then the sections' bytes back to back. Method 0 = stored, 1 = zlib (stdlib:
QGIS's Python has it on every platform, no new dependency). What the sections hold:

- float16 / float32 (lossless): the flat array's little-endian bytes split into byte planes (plane i = byte i of
  every element: a byte shuffle). Only the top plane (sign and exponent) is compressed (zlib, run-length
  strategy); the low planes are mantissa bits that do not compress and are stored, costing no time.
- "int8" (QUANTISED_DTYPE, lossy): per channel of each feature map, an affine code: value = offset + scale * q
  with q a uint8 from 0 to 255 (offset = the channel's minimum, scale = its range / 255; a rounding error of
  at most scale / 2). Section 0: float32 (2, channels) offsets then scales, channels in layout order; section
  1: the codes (uint8, zlib). Decoded to float32.

Errors: `decode_tile` raises ValueError saying what is wrong with a payload (the store reports it as damage).
"""

from __future__ import annotations

import struct
import zlib
from typing import List, Sequence, Tuple, Union

import numpy as np

#: The codec of a version-4 store's tiles (None: a raw .npy of the feature dtype, versions 1 to 3).
CODEC = "byteplanes-zlib"
FEATURE_CODECS = (CODEC,)
#: The quantised feature dtype (8-bit per-channel affine codes, decoded to float32): needs the codec.
QUANTISED_DTYPE = "int8"
FEATURE_DTYPES = ("float16", "float32", QUANTISED_DTYPE)

Buffer = Union[bytes, memoryview]
MAGIC = b"QSAMTILE"
PAYLOAD_VERSION = 1
HEADER = struct.Struct("<8sBB6x")  # magic, payload version, section count
SECTION = struct.Struct("<B7xQQ")  # method, bytes decoded, bytes stored
STORED, ZLIB = 0, 1
#: zlib level 1 with the run-length strategy: the top byte plane's Huffman coding at a third of level 1's
#: default-strategy time, within 1 % of its size on SAM 2 features (bench/store.py).
ZLIB_LEVEL, ZLIB_STRATEGY = 1, zlib.Z_RLE


def decoded_dtype(dtype: str) -> np.dtype:
    """The numpy type of a tile's decoded values: the feature dtype, float32 for the quantised one."""
    return np.dtype(np.float32 if dtype == QUANTISED_DTYPE else dtype)


def _compress(data: np.ndarray) -> Tuple[int, Buffer]:
    """(method, bytes) of one section: zlib when it saves at least 2 %, else stored (not copied)."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    packer = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, 15, 9, ZLIB_STRATEGY)
    packed = packer.compress(raw) + packer.flush()
    return (ZLIB, packed) if len(packed) < 0.98 * raw.size else (STORED, memoryview(raw))


def _payload(sections: Sequence[Tuple[int, int, Buffer]]) -> np.ndarray:
    """The flat uint8 payload of (method, bytes decoded, bytes stored) sections."""
    parts = [HEADER.pack(MAGIC, PAYLOAD_VERSION, len(sections))]
    parts += [SECTION.pack(method, size, len(data)) for method, size, data in sections]
    parts += [data for _, _, data in sections]
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def byte_planes(flat: np.ndarray) -> np.ndarray:
    """(itemsize, N) uint8: plane i holds byte i (little-endian) of each of the N elements of `flat`."""
    little = np.ascontiguousarray(flat, dtype=flat.dtype.newbyteorder("<"))
    return np.ascontiguousarray(little.view(np.uint8).reshape(-1, little.dtype.itemsize).T)


def encode_lossless(flat: np.ndarray) -> np.ndarray:
    """The payload of a flat float16 or float32 array: byte planes, the top one compressed."""
    planes = byte_planes(flat)
    sections: List[Tuple[int, int, Buffer]] = [(STORED, plane.size, memoryview(plane)) for plane in planes[:-1]]
    method, data = _compress(planes[-1])
    return _payload(sections + [(method, planes[-1].size, data)])


def channel_ranges(flat: np.ndarray, shapes: Sequence[Tuple[int, int, int]]) -> np.ndarray:
    """(2, channels) float32: each channel's minimum and its range / 255, channels of the (C, H, W) maps of
    `shapes` laid back to back in `flat`, in order."""
    lows, scales, offset = [], [], 0
    for channels, height, width in shapes:
        block = flat[offset:offset + channels * height * width].reshape(channels, -1)
        offset += block.size
        low = block.min(axis=1)
        lows.append(low)
        scales.append((block.max(axis=1) - low) / 255.0)
    return np.stack([np.concatenate(lows), np.concatenate(scales)]).astype(np.float32)


def encode_quantised(flat: np.ndarray, shapes: Sequence[Tuple[int, int, int]]) -> np.ndarray:
    """The payload of a flat float array quantised per channel to uint8 codes (see the module's docstring)."""
    flat = np.asarray(flat, dtype=np.float32)
    ranges = channel_ranges(flat, shapes)
    codes, offset, channel = np.empty(flat.size, dtype=np.uint8), 0, 0
    for channels, height, width in shapes:
        size = channels * height * width
        low = ranges[0, channel:channel + channels, None]
        scale = ranges[1, channel:channel + channels, None]
        block = (flat[offset:offset + size].reshape(channels, -1) - low) / np.where(scale > 0, scale, 1.0)
        codes[offset:offset + size] = np.clip(np.rint(block), 0, 255).reshape(-1)
        offset, channel = offset + size, channel + channels
    method, data = _compress(codes)
    return _payload([(STORED, ranges.nbytes, memoryview(ranges).cast("B")), (method, codes.size, data)])


def encode_tile(flat: np.ndarray, dtype: str, shapes: Sequence[Tuple[int, int, int]]) -> np.ndarray:
    """The flat uint8 payload of one tile's flat features (the (C, H, W) maps of `shapes` back to back) stored
    as `dtype` ("float16", "float32": lossless; "int8": quantised). ValueError for another dtype."""
    if dtype == QUANTISED_DTYPE:
        return encode_quantised(flat, shapes)
    if dtype not in FEATURE_DTYPES:
        raise ValueError(f"no tile codec for feature dtype {dtype!r}")
    return encode_lossless(np.asarray(flat, dtype=np.dtype(dtype)))


def read_sections(payload: np.ndarray) -> List[np.ndarray]:
    """The decoded bytes (uint8 arrays) of each section of a payload; ValueError saying what is wrong."""
    data = memoryview(np.ascontiguousarray(payload, dtype=np.uint8)).cast("B")
    if len(data) < HEADER.size:
        raise ValueError(f"holds {len(data)} bytes, too few for a compressed tile")
    magic, version, count = HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != PAYLOAD_VERSION:
        raise ValueError("is not a compressed QuickSAM tile (wrong magic bytes or payload version)")
    position = HEADER.size + count * SECTION.size
    heads = [SECTION.unpack_from(data, HEADER.size + i * SECTION.size) for i in range(count)]
    sections = []
    for method, size, stored in heads:
        chunk = data[position:position + stored]
        position += stored
        if len(chunk) != stored:
            raise ValueError("is truncated (a section ends past the end of the file)")
        raw = zlib.decompress(chunk) if method == ZLIB else chunk if method == STORED else None  # stored: no copy
        if raw is None or len(raw) != size:
            raise ValueError(f"has a section of method {method} that does not decode to {size} bytes")
        sections.append(np.frombuffer(raw, dtype=np.uint8))
    return sections


def decode_lossless(sections: Sequence[np.ndarray], dtype: np.dtype, length: int) -> np.ndarray:
    """The flat (length,) array of `dtype` from its byte planes (ValueError when they do not fit)."""
    if len(sections) != dtype.itemsize or any(plane.size != length for plane in sections):
        raise ValueError(f"does not hold {dtype.itemsize} byte planes of {length} values")
    interleaved = np.empty((length, dtype.itemsize), dtype=np.uint8)
    for index, plane in enumerate(sections):
        interleaved[:, index] = plane
    return interleaved.reshape(-1).view(dtype.newbyteorder("<")).astype(dtype, copy=False)


def decode_quantised(sections: Sequence[np.ndarray], shapes: Sequence[Tuple[int, int, int]]) -> np.ndarray:
    """The flat float32 values of a quantised tile (ValueError when the sections do not fit `shapes`)."""
    channels = sum(shape[0] for shape in shapes)
    length = sum(int(np.prod(shape)) for shape in shapes)
    if len(sections) != 2 or sections[0].size != 8 * channels or sections[1].size != length:
        raise ValueError(f"does not hold the ranges of {channels} channels and {length} codes")
    ranges = sections[0].view(np.float32).reshape(2, channels)
    flat, offset, channel = np.empty(length, dtype=np.float32), 0, 0
    for count, height, width in shapes:
        size = count * height * width
        codes = sections[1][offset:offset + size].reshape(count, -1)
        out = flat[offset:offset + size].reshape(count, -1)
        np.multiply(codes, ranges[1, channel:channel + count, None], out=out)
        out += ranges[0, channel:channel + count, None]
        offset, channel = offset + size, channel + count
    return flat


def decode_tile(payload: np.ndarray, dtype: str, shapes: Sequence[Tuple[int, int, int]]) -> np.ndarray:
    """The flat decoded values (`decoded_dtype(dtype)`) of a tile payload whose maps have (C, H, W) `shapes`.
    ValueError saying what is wrong (not a payload, truncated, a section that does not decompress or fit)."""
    try:
        sections = read_sections(payload)
    except zlib.error as exc:
        raise ValueError(f"does not decompress ({exc})") from None
    if dtype == QUANTISED_DTYPE:
        return decode_quantised(sections, shapes)
    return decode_lossless(sections, np.dtype(dtype), sum(int(np.prod(shape)) for shape in shapes))
