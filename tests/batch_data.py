"""The test folder of issue 13 ("many rasters"): small synthetic rasters in sub-folders, a name clash across
folders, a non-raster file, a corrupt raster and a name with spaces and non-ASCII letters.

    ROOT/
      Orthofoto Köln 2024.tif   200 x 180 px
      field_BF.tif              180 x 200 px   (for --include _BF)
      upper.TIF                 150 x 150 px   (an upper-case extension)
      fake.tif                  text: a corrupt raster
      notes.txt                 not a raster
      north/scene.tif           200 x 200 px   } the same name in two folders: the same output in one
      south/scene.tif           220 x 200 px   } output folder
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from synthetic import square_scene, write_raster

#: Encode options that keep a batch quick: 128 px tiles, random weights, a small overlap (2 x 2 tiles each).
FAST_ENCODE = ["--random-weights", "--tile-size", "128", "--overlap", "16", "--device", "cpu"]
KOELN = "Orthofoto Köln 2024.tif"
#: The rasters of ROOT that GDAL reads (relative paths), fake.tif and notes.txt aside.
RASTERS = (KOELN, "field_BF.tif", "north/scene.tif", "south/scene.tif", "upper.TIF")
TOP_LEVEL = (KOELN, "fake.tif", "field_BF.tif", "upper.TIF")


def build_batch_folder(root: Path) -> Path:
    """Write the test folder into `root` (made if needed); returns `root`."""
    for sub in ("north", "south"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_raster(root / KOELN, square_scene(200, 180, (40, 40, 60)))
    write_raster(root / "field_BF.tif", square_scene(180, 200, (60, 30, 50)))
    write_raster(root / "upper.TIF", square_scene(150, 150, (20, 20, 40)))
    write_raster(root / "north" / "scene.tif", square_scene(200, 200, (50, 50, 60)))
    write_raster(root / "south" / "scene.tif", square_scene(220, 200, (90, 60, 70)))
    (root / "fake.tif").write_text("this is not a GeoTIFF\n", encoding="utf-8")
    (root / "notes.txt").write_text("field notes\n", encoding="utf-8")
    return root


def relative(paths: List[Path], root: Path) -> List[str]:
    """`paths` relative to `root`, with forward slashes."""
    return [path.relative_to(root).as_posix() for path in paths]
