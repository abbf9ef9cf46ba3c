"""Every polygon QuickSAM writes is valid by GEOS's rules, whatever the options (issue 8, section 4).

For every combination of keep/fill holes, minimum area and simplification, `mask_to_polygons` gives a
MultiPolygon that GEOS finds valid (shapely's `is_valid` on the WKB, `explain_validity` in the message);
with simplification 0 its area is exactly the pixel area of the mask as the options change it. The
expected pixels come from an oracle on the pixels alone (no GDAL, no GEOS):

- parts are the 4-connected regions of True pixels (GDAL Polygonize with 4-connectivity);
- the holes of a part are the 4-connected regions of the part's complement that do not reach the
  border (GDAL traces the background with 4-connectivity as well: a hole may touch its shell at a pixel
  corner); a hole's area includes the other parts inside it;
- a hole is filled when holes are not kept or it is smaller than the minimum area; a part lying in a
  filled hole is inside the filled shell (it is not counted again); a part smaller than the minimum
  area (holes filled as above) is dropped.

Then the geometry written through QGIS (`quicksam:segmentprompts`, one output layer) stays valid.

Areas are compared with a relative tolerance of 1e-9, not bitwise: vertices are float64 map
coordinates (x0 + col * a + row * b, ...), each within half an ulp of its magnitude (4.7e-10 m at
y = 4.2e6 m), and GEOS sums the area in floating point, so the area is off by about that rounding over
the pixel's side relative to it: 5e-11 for the 10 m pixels at UTM magnitudes here, less for the other
transforms (with these, all coordinates are exact binary fractions and the areas come out exact). A
wrong polygon is off by at least one pixel, 1/256 of a 16 x 16 mask.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import deque
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pytest
import shapely
import shapely.wkb

from quicksam.interactive.vectorise import mask_to_polygons

GeoTransform = Tuple[float, float, float, float, float, float]

#: North-up, negative pixel height (EPSG:32633 magnitudes); south-up (positive pixel height); rotated and
#: sheared with non-square pixels.
TRANSFORMS: Tuple[GeoTransform, ...] = (
    (500000.0, 10.0, 0.0, 4200000.0, 0.0, -10.0),
    (-20.0, 1.0, 0.0, 30.0, 0.0, 1.0),
    (1000.0, 2.0, 0.5, 5000.0, 0.25, -3.0),
)
#: Simplification tolerances in pixels (times the pixel's side, sqrt |det|, for map units). 3 px makes
#: holes collapse onto islands, which simplifying all parts together cannot avoid alone.
SIMPLIFY_PIXELS = (0.0, 0.5, 1.0, 3.0)
#: Not a whole number, so no part or hole is exactly at the limit (float rounding could go either way).
MIN_AREA_PIXELS = 3.5
AREA_REL = 1e-9  # see the module docstring
OPTIONS = list(itertools.product((True, False), (0.0, MIN_AREA_PIXELS), SIMPLIFY_PIXELS))
FOUR_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


# -- the pixel oracle ------------------------------------------------------------------------------------


def regions(binary: np.ndarray) -> List[np.ndarray]:
    """The 4-connected regions of the True pixels of a (H, W) bool array, each a (H, W) bool array."""
    seen = np.zeros_like(binary, bool)
    height, width = binary.shape
    found = []
    for start in zip(*np.nonzero(binary)):
        if seen[start]:
            continue
        region = np.zeros_like(binary, bool)
        queue = deque([start])
        seen[start] = True
        while queue:
            row, col = queue.popleft()
            region[row, col] = True
            for d_row, d_col in FOUR_NEIGHBOURS:
                r, c = row + d_row, col + d_col
                if 0 <= r < height and 0 <= c < width and binary[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    queue.append((r, c))
        found.append(region)
    return found


def holes(part: np.ndarray) -> List[np.ndarray]:
    """The holes of one part (a padded (H, W) bool array): the 4-connected regions of its complement,
    within its bounding box grown by a pixel, that do not reach that box's border."""
    rows, cols = np.nonzero(part)
    if len(rows) < 7:  # the smallest 4-connected part around a pixel has 7 (a ring pinched at a corner)
        return []
    row0, row1, col0, col1 = rows.min() - 1, rows.max() + 2, cols.min() - 1, cols.max() + 2
    found = []
    for region in regions(~part[row0:row1, col0:col1]):
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            continue
        hole = np.zeros_like(part)
        hole[row0:row1, col0:col1] = region
        found.append(hole)
    return found


@dataclasses.dataclass
class Expected:
    """What a mask becomes with some options: its pixels and its number of parts."""

    pixels: np.ndarray
    parts: int


def parts_and_holes(mask: np.ndarray) -> List[Tuple[np.ndarray, List[np.ndarray]]]:
    """Each part of `mask` with its holes, as (H + 2, W + 2) bool arrays of the mask padded by a pixel."""
    return [(part, holes(part)) for part in regions(np.pad(mask.astype(bool), 1))]


def expected(mask: np.ndarray, keep_holes: bool, min_area_pixels: float,
             traced: Optional[List[Tuple[np.ndarray, List[np.ndarray]]]] = None) -> Expected:
    """The pixels the polygons of `mask` cover with these options (rules in the module docstring);
    `traced` is `parts_and_holes(mask)` if known."""
    shapes, filled_holes = [], []
    for part, part_holes in traced if traced is not None else parts_and_holes(mask):
        shape = part.copy()
        for hole in part_holes:
            if not keep_holes or hole.sum() < min_area_pixels:
                shape |= hole
                filled_holes.append(hole)
        shapes.append((part, shape))
    pixels = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), bool)
    count = 0
    for part, shape in shapes:
        if any((part & hole).any() for hole in filled_holes):
            continue  # inside a filled hole of another part: inside that part's filled shell
        if shape.sum() >= min_area_pixels:
            pixels |= shape
            count += 1
    return Expected(pixels[1:-1, 1:-1], count)


def perimeter(pixels: np.ndarray, transform: GeoTransform) -> float:
    """Length of the boundary of the True pixels (map units): pixel sides between True and False."""
    padded = np.pad(pixels, 1)
    _, a, b, _, d, e = transform
    along_rows = np.count_nonzero(padded[1:, :] != padded[:-1, :])  # sides one pixel wide
    along_columns = np.count_nonzero(padded[:, 1:] != padded[:, :-1])  # sides one pixel high
    return along_rows * float(np.hypot(a, d)) + along_columns * float(np.hypot(b, e))


def test_the_oracle_on_an_annulus_with_an_island():
    mask = annulus_with_island()
    assert expected(mask, True, 0).pixels.sum() == 17 and expected(mask, True, 0).parts == 2
    assert expected(mask, False, 0).pixels.sum() == 25 and expected(mask, False, 0).parts == 1
    assert expected(mask, True, 10).pixels.sum() == 25  # the 9 px hole filled, the island inside it
    assert expected(mask, True, 2).pixels.sum() == 16  # the 1 px island dropped, the hole kept


# -- masks -----------------------------------------------------------------------------------------------


def speckle(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    return rng.random((size, size)) < rng.uniform(0.25, 0.75)


def blobs(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Smoothed noise thresholded: rounded objects with bays, holes and islands."""
    field = rng.random((size, size))
    for _ in range(2):
        padded = np.pad(field, 1, mode="edge")
        field = sum(padded[r:r + size, c:c + size] for r in range(3) for c in range(3)) / 9
    return field > np.quantile(field, rng.uniform(0.3, 0.7))


def nested_rectangles(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Rectangles XOR-ed together: a chain, each inside the last by 0 to 3 px a side (rings in rings,
    islands of every size in holes, corners and sides touching), and a few anywhere."""
    mask = np.zeros((size, size), bool)
    top, left, bottom, right = 0, 0, size, size
    margins = (0, 1, 1, 1, 2, 2, 3)
    while bottom - top >= 1 and right - left >= 1:
        mask[top:bottom, left:right] ^= True
        top, left = top + rng.choice(margins), left + rng.choice(margins)
        bottom, right = bottom - rng.choice(margins), right - rng.choice(margins)
    for _ in range(rng.integers(0, 3)):
        top, left = rng.integers(0, size - 1, 2)
        mask[top:top + rng.integers(1, 6), left:left + rng.integers(1, 6)] ^= True
    return mask


def random_masks(count_per_kind: int = 100) -> Iterator[Tuple[str, np.ndarray, GeoTransform]]:
    rng = np.random.default_rng(20261108)
    for index in range(count_per_kind):
        for kind in (speckle, blobs, nested_rectangles):
            yield f"{kind.__name__} #{index}", kind(rng), TRANSFORMS[index % len(TRANSFORMS)]


@pytest.fixture(scope="module")
def masks_with_expectations():
    """(name, mask, geotransform, {(keep_holes, min_area_pixels): Expected}) for 300 seeded masks."""
    cases = []
    for name, mask, transform in random_masks():
        traced = parts_and_holes(mask)
        wanted = {(keep, minimum): expected(mask, keep, minimum, traced)
                  for keep, minimum in itertools.product((True, False), (0.0, MIN_AREA_PIXELS))}
        cases.append((name, mask, transform, wanted))
    return cases


# -- checks ----------------------------------------------------------------------------------------------


def pixel_area(transform: GeoTransform) -> float:
    _, a, b, _, d, e = transform
    return abs(a * e - b * d)


def problems(mask: np.ndarray, transform: GeoTransform, keep_holes: bool, min_area_pixels: float,
             simplify_pixels: float, wanted: Expected) -> Optional[str]:
    """What is wrong with the polygons of `mask` with these options (None: nothing)."""
    tolerance = simplify_pixels * pixel_area(transform) ** 0.5
    result = mask_to_polygons(mask, transform, simplify_tolerance=tolerance, min_area_pixels=min_area_pixels,
                              keep_holes=keep_holes)
    geometry = shapely.wkb.loads(result.wkb)
    if geometry.geom_type != "MultiPolygon":
        return f"a {geometry.geom_type}, not a MultiPolygon"
    if not shapely.is_valid(geometry):
        return f"invalid: {shapely.is_valid_reason(geometry)}"
    if result.parts != len(geometry.geoms) or not math.isclose(result.area, geometry.area, rel_tol=AREA_REL):
        return f"reports {result.parts} parts of {result.area}, holds {len(geometry.geoms)} of {geometry.area}"
    exact_area = int(wanted.pixels.sum()) * pixel_area(transform)
    if simplify_pixels == 0:
        if not math.isclose(geometry.area, exact_area, rel_tol=AREA_REL):
            return f"area {geometry.area}, expected {exact_area} ({int(wanted.pixels.sum())} px)"
        if len(geometry.geoms) != wanted.parts:
            return f"{len(geometry.geoms)} parts, expected {wanted.parts}"
    else:
        # Douglas-Peucker moves no boundary point further than the tolerance
        if abs(geometry.area - exact_area) > perimeter(wanted.pixels, transform) * tolerance:
            return f"area {geometry.area} is further than perimeter x tolerance from {exact_area}"
    return None


def rows_of(mask: np.ndarray) -> str:
    return "/".join("".join("X" if value else "." for value in row) for row in mask)


@pytest.mark.parametrize("keep_holes,min_area_pixels,simplify_pixels", OPTIONS)
def test_random_masks_give_valid_polygons_of_the_exact_area(masks_with_expectations, keep_holes,
                                                           min_area_pixels, simplify_pixels):
    failures = []
    for name, mask, transform, wanted in masks_with_expectations:
        problem = problems(mask, transform, keep_holes, min_area_pixels, simplify_pixels,
                           wanted[keep_holes, min_area_pixels])
        if problem:
            failures.append(f"{name} {rows_of(mask)} geotransform {transform}: {problem}")
    assert not failures, f"{len(failures)} of {len(masks_with_expectations)} masks: " + "\n".join(failures[:5])


# -- named shapes ------------------------------------------------------------------------------------------


def from_rows(*rows: str) -> np.ndarray:
    return np.array([[char == "X" for char in row] for row in rows])


def annulus_with_island() -> np.ndarray:
    return from_rows("XXXXX",
                     "X...X",
                     "X.X.X",
                     "X...X",
                     "XXXXX")


def checkerboard(size: int = 8) -> np.ndarray:
    return (np.add.outer(np.arange(size), np.arange(size)) % 2).astype(bool)


NAMED_SHAPES = {
    "annulus with island": annulus_with_island(),
    "annulus with an annulus with an island": from_rows("XXXXXXXXX",
                                                        "X.......X",
                                                        "X.XXXXX.X",
                                                        "X.X...X.X",
                                                        "X.X.X.X.X",
                                                        "X.X...X.X",
                                                        "X.XXXXX.X",
                                                        "X.......X",
                                                        "XXXXXXXXX"),
    "island touching its hole's corners": from_rows("XXXXX",
                                                    "X..XX",
                                                    "X.X.X",
                                                    "XX..X",
                                                    "XXXXX"),
    "corner-touching squares": from_rows("XX..",
                                         "XX..",
                                         "..XX",
                                         "..XX"),
    "hole touching the shell at a corner": from_rows("XXX",
                                                     "X.X",
                                                     "XX."),
    "holes touching at a corner": from_rows("XXXX",
                                            "X.XX",
                                            "XX.X",
                                            "XXXX"),
    "one-pixel lines": from_rows("XXXXXXXXXX",
                                 "..........",
                                 "X.X.......",
                                 "X..X......",
                                 "X...X.....",
                                 "X....XXXXX"),
    "one-pixel ring": from_rows("XXXXXXX",
                                "X.....X",
                                "X.....X",
                                "XXXXXXX"),
    "checkerboard": checkerboard(),
    # at 3 px, simplifying all parts together still moves this hole out of its shell...
    "hole pushed out of its shell": from_rows("XXXXX",
                                              "X....",
                                              "X.XX.",
                                              "X.X.X",
                                              "XXXXX"),
    # ... and collapses this hole onto its island (nested shells): both need the union repair
    "hole collapsing onto its island": from_rows("XXXXX",
                                                 "XXX.X",
                                                 ".X.X.",
                                                 "XXX.X",
                                                 "XXXXX"),
    "checkerboard in a frame": np.pad(~checkerboard(7), 1, constant_values=True),
}


@pytest.mark.parametrize("transform", TRANSFORMS, ids=("north-up", "south-up", "rotated"))
@pytest.mark.parametrize("name", sorted(NAMED_SHAPES))
def test_named_shapes_give_valid_polygons_of_the_exact_area(name, transform):
    mask = NAMED_SHAPES[name]
    failures = []
    for keep_holes, min_area_pixels, simplify_pixels in OPTIONS + [(True, 0.0, 1.5), (False, 0.0, 1.5)]:
        problem = problems(mask, transform, keep_holes, min_area_pixels, simplify_pixels,
                           expected(mask, keep_holes, min_area_pixels))
        if problem:
            failures.append(f"keep_holes={keep_holes} min_area={min_area_pixels} simplify={simplify_pixels} px: "
                            f"{problem}")
    assert not failures, "\n".join(failures)


def test_a_filled_hole_takes_its_island_into_the_shell():
    transform = TRANSFORMS[0]
    filled = shapely.wkb.loads(mask_to_polygons(annulus_with_island(), transform, keep_holes=False).wkb)
    assert len(filled.geoms) == 1 and not filled.geoms[0].interiors
    assert filled.area == pytest.approx(25 * pixel_area(transform), rel=AREA_REL)  # not 26: no island twice
    small_holes_filled = shapely.wkb.loads(mask_to_polygons(annulus_with_island(), transform,
                                                            min_area_pixels=10).wkb)
    assert shapely.equals(small_holes_filled, filled)


def test_corner_touching_parts_stay_apart_when_simplified():
    transform = TRANSFORMS[2]
    mask = NAMED_SHAPES["corner-touching squares"]
    side = pixel_area(transform) ** 0.5
    exact = shapely.wkb.loads(mask_to_polygons(mask, transform).wkb)
    simple = shapely.wkb.loads(mask_to_polygons(mask, transform, simplify_tolerance=side).wkb)
    assert shapely.is_valid(simple), shapely.is_valid_reason(simple)
    assert len(exact.geoms) == len(simple.geoms) == 2
    first, second = simple.geoms
    assert first.intersection(second).area == 0  # no shared area, at most a shared corner


def test_simplification_that_gives_no_valid_polygons_keeps_the_pixel_edges(monkeypatch):
    """The last resort: if even the union repair fails, the exact (valid) pixel polygons are written."""
    from quicksam.interactive import vectorise

    monkeypatch.setattr(vectorise, "_repaired", lambda pieces: None)
    mask, transform = NAMED_SHAPES["hole collapsing onto its island"], TRANSFORMS[0]
    simple = shapely.wkb.loads(mask_to_polygons(mask, transform, simplify_tolerance=30.0).wkb)
    assert shapely.equals(simple, shapely.wkb.loads(mask_to_polygons(mask, transform).wkb))


# -- through QGIS ------------------------------------------------------------------------------------------

#: A decoded mask that is every hard case at once, placed in the tile's top-left corner.
HARD_MASK = np.zeros((48, 48), bool)
HARD_MASK[:16, :16] = nested_rectangles(np.random.default_rng(3))
HARD_MASK[:16, 16:32] = speckle(np.random.default_rng(4))
HARD_MASK[16:25, 0:9] = NAMED_SHAPES["annulus with an annulus with an island"]
HARD_MASK[16:24, 16:24] = checkerboard()
HARD_MASK[30:39, 30:39] = NAMED_SHAPES["checkerboard in a frame"]


@pytest.fixture(scope="module")
def hard_store(tmp_path_factory) -> Path:
    from synthetic import encode, square_scene, write_raster

    folder = tmp_path_factory.mktemp("valid-polygons")
    raster = write_raster(folder / "scene.tif", square_scene(256, 256, (60, 60, 80)))
    store, _ = encode(raster, folder / "store")
    return store.root


@pytest.mark.parametrize("keep_holes,min_area,simplify", [(True, 0.0, 10.0), (False, 2.0, 10.0), (False, 0.0, 0.0)])
def test_polygons_written_through_qgis_are_valid(qgis_processing, plugin, hard_store, monkeypatch,
                                                keep_holes, min_area, simplify):
    """`quicksam:segmentprompts` writes the engine's polygons to its output layer: each stays valid."""
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsVectorLayer
    from synthetic import CRS, pixel_to_map_default

    from quicksam.interactive.decoding import OnnxDecoder

    real_decode = OnnxDecoder.decode

    def decode_hard_mask(self, features, prompts, multimask=False):
        result = real_decode(self, features, prompts, multimask=multimask)
        masks = np.zeros_like(result.masks)
        masks[:, :HARD_MASK.shape[0], :HARD_MASK.shape[1]] = HARD_MASK
        return dataclasses.replace(result, masks=masks)

    monkeypatch.setattr(OnnxDecoder, "decode", decode_hard_mask)
    layer = QgsVectorLayer(f"Point?crs={CRS}", "prompts", "memory")
    feature = QgsFeature(layer.fields())
    feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(*pixel_to_map_default(100, 100))))
    assert layer.dataProvider().addFeatures([feature])
    output = processing.run("quicksam:segmentprompts",
                            {"STORE": str(hard_store), "PROMPTS": layer, "OUTPUT": "TEMPORARY_OUTPUT",
                             "SIMPLIFY": simplify, "MIN_AREA": min_area, "KEEP_HOLES": keep_holes})["OUTPUT"]
    written = list(output.getFeatures())
    assert len(written) == 1
    geometry = written[0].geometry()
    assert geometry.isGeosValid(), geometry.validateGeometry()
    as_shapely = shapely.wkb.loads(bytes(geometry.asWkb()))
    assert shapely.is_valid(as_shapely), shapely.is_valid_reason(as_shapely)
    if simplify == 0:
        wanted = expected(HARD_MASK, keep_holes, min_area)
        assert as_shapely.area == pytest.approx(wanted.pixels.sum() * 100.0, rel=AREA_REL)  # 10 m pixels


def test_oracle_holes_match_the_named_shapes():
    """The oracle's hole rule is GDAL's: a background pixel touching the outside only at a corner is
    a hole (4-connected background)."""
    assert len(holes(np.pad(NAMED_SHAPES["hole touching the shell at a corner"], 1))) == 1
    assert len(holes(np.pad(NAMED_SHAPES["holes touching at a corner"], 1))) == 2
    assert expected(NAMED_SHAPES["checkerboard"], False, 0).pixels.sum() == 32  # no part encloses a pixel
