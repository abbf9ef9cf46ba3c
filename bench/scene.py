"""A synthetic scene of objects with known masks, for benchmarks that need real objects' sizes.

    scene = write_object_scene(path, tiles_per_side=2)   # RGB uint8 GeoTIFF + labels in memory

Each 1024 px tile holds, wholly inside it (objects never cross a tile edge, so with overlap 0 an object's mask
in its tile is the whole object): one lake (a rotated ellipse of ~200 000-290 000 px), four fields (rotated
rectangles of ~30 000-45 000 px) and sixteen houses (rotated rectangles of ~200-600 px), on textured ground.
Coordinates: raster pixels (col, row), (0, 0) = top-left corner of the top-left pixel; the raster is in
EPSG:32633 with 0.5 m pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np

TILE = 1024
KINDS = ("house", "field", "lake")
_COLOURS = {"house": (185, 80, 60), "field": (170, 150, 90), "lake": (35, 55, 115)}


@dataclass(frozen=True)
class SceneObject:
    """One object: its id in `Scene.labels`, kind, centre (col, row; raster pixels, inside the object since
    every shape is convex), pixel count and the (col_off, row_off) of the tile holding it."""

    object_id: int
    kind: str
    col: float
    row: float
    pixels: int
    tile: Tuple[int, int]


@dataclass
class Scene:
    """The raster written, its (H, W) uint16 labels (0 = ground, else an object id) and its objects."""

    raster: Path
    labels: np.ndarray
    objects: List[SceneObject]

    def object_mask(self, object_id: int, col_off: int, row_off: int, size: int = TILE) -> np.ndarray:
        """(size, size) bool: the object's pixels in the window at (col_off, row_off), False past the raster."""
        window = self.labels[row_off:row_off + size, col_off:col_off + size] == object_id
        mask = np.zeros((size, size), bool)
        mask[:window.shape[0], :window.shape[1]] = window
        return mask


def _paint(labels: np.ndarray, object_id: int, shape: str, centre: Tuple[float, float],
           half: Tuple[float, float], angle: float) -> int:
    """Label the pixels whose centre lies in a rotated ellipse or rectangle (half axes `half` in pixels, angle in
    radians, centre (col, row)); returns their count."""
    col, row = centre
    reach = int(np.ceil(np.hypot(*half))) + 1
    rows = np.arange(max(int(row) - reach, 0), min(int(row) + reach + 1, labels.shape[0]))
    cols = np.arange(max(int(col) - reach, 0), min(int(col) + reach + 1, labels.shape[1]))
    dx, dy = cols[None, :] + 0.5 - col, rows[:, None] + 0.5 - row
    u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
    if shape == "ellipse":
        inside = (u / half[0]) ** 2 + (v / half[1]) ** 2 <= 1.0
    else:
        inside = (np.abs(u) <= half[0]) & (np.abs(v) <= half[1])
    labels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1][inside] = object_id
    return int(inside.sum())


def _tile_layout(rng: np.random.Generator) -> List[Tuple[str, str, Tuple[float, float], Tuple[float, float], float]]:
    """(kind, shape, centre, half axes, angle) of one tile's objects, in tile pixels, each inside its own cell."""
    layout = [("lake", "ellipse", (380.0, 300.0), (rng.uniform(300, 340), rng.uniform(220, 250)),
               rng.uniform(-0.26, 0.26))]
    for centre in ((880.0, 150.0), (880.0, 430.0), (175.0, 800.0), (500.0, 800.0)):
        layout.append(("field", "rect", centre, (rng.uniform(85, 105), rng.uniform(85, 105)),
                       rng.uniform(-0.17, 0.17)))
    for i in range(16):
        centre = (710.0 + 80 * (i % 4), 630.0 + 100 * (i // 4))
        layout.append(("house", "rect", centre, (rng.uniform(7, 11), rng.uniform(8, 14)), rng.uniform(0, np.pi)))
    return layout


def _colour_image(labels: np.ndarray, objects: List[SceneObject], rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) uint8: textured ground, each object a flat colour of its kind (varied per object) plus noise."""
    image = rng.integers(50, 110, (3,) + labels.shape, dtype=np.uint8)
    image[1] = np.clip(image[1].astype(np.int16) + 30, 0, 255).astype(np.uint8)  # greenish ground
    colour = np.zeros((len(objects) + 1, 3), np.int16)
    for obj in objects:
        colour[obj.object_id] = np.asarray(_COLOURS[obj.kind]) + rng.integers(-20, 21, 3)
    painted = labels > 0
    noise = rng.integers(-12, 13, (3, int(painted.sum())), dtype=np.int16)
    image[:, painted] = np.clip(colour[labels[painted]].T + noise, 0, 255).astype(np.uint8)
    return image


def write_object_scene(path: Path, tiles_per_side: int, seed: int = 0) -> Scene:
    """Write the scene (tiles_per_side x tiles_per_side tiles of 1024 px) as an RGB uint8 GeoTIFF at `path`."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    size = TILE * tiles_per_side
    labels = np.zeros((size, size), np.uint16)
    objects: List[SceneObject] = []
    for tile_row in range(0, size, TILE):
        for tile_col in range(0, size, TILE):
            for kind, shape, (col, row), half, angle in _tile_layout(rng):
                object_id = len(objects) + 1
                centre = (tile_col + col, tile_row + row)
                pixels = _paint(labels, object_id, shape, centre, half, angle)
                objects.append(SceneObject(object_id, kind, centre[0], centre[1], pixels, (tile_col, tile_row)))
    image = _colour_image(labels, objects, rng)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4200000, 0.5, 0.5), tiled=True) as dst:
        dst.write(image)
    return Scene(Path(path), labels, objects)


def mask_to_low_res_logits(mask: np.ndarray, low_res: int, magnitude: float = 10.0) -> np.ndarray:
    """(S, S) bool -> (low_res, low_res) float32 logits at the decoder's low resolution: +magnitude where a
    low-res pixel's block is wholly inside the mask, -magnitude wholly outside, linear in the fraction inside
    between (so a bilinear upsampling thresholded at 0 puts the boundary within about a pixel of the mask's).
    S must be a multiple of low_res."""
    size = mask.shape[0]
    if mask.shape != (size, size) or size % low_res:
        raise ValueError(f"mask of shape {mask.shape} is not square with a side a multiple of {low_res}")
    block = size // low_res
    fraction = mask.reshape(low_res, block, low_res, block).mean(axis=(1, 3))
    return ((2.0 * fraction - 1.0) * magnitude).astype(np.float32)
