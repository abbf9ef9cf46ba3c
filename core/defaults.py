"""QuickSAM's defaults, in one place for the CLI, the Processing algorithms, the dock and the core."""

#: The model encoded with when none is chosen (an id of core/catalogue.py's MODELS).
DEFAULT_MODEL = "sam2.1_hiera_t"

#: The models' native input size, in pixels: the side of a square tile when none is chosen.
DEFAULT_TILE_SIZE = 1024


def default_overlap(tile_size: int) -> int:
    """The overlap of neighbouring tiles, in pixels, when none is chosen: a quarter of the tile size.

    At the native 1024 px that is 256 px: every pixel not near the raster's outer edge lies at least
    128 px inside some tile, and any object up to 256 px across fits entirely in one tile, at 1.78x the
    tile count of no overlap (docs/encoding.md). The CLI and the Processing algorithm both use this rule.
    """
    return int(tile_size) // 4


#: The overlap at the native tile size (256 px).
DEFAULT_OVERLAP = default_overlap(DEFAULT_TILE_SIZE)

#: How a prompt's mask is chosen among SAM's outputs (`multimask_output`): "single" = SAM's single-mask
#: output, "best" = the highest predicted IoU, "largest"/"smallest" = by area, "all" = every output.
MASK_MODES = ("single", "best", "largest", "smallest", "all")
