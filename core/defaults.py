"""QuickSAM's defaults, in one place for the CLI, the Processing algorithms, the dock and the core."""

#: How a prompt's mask is chosen among SAM's outputs (`multimask_output`): "single" = SAM's single-mask
#: output, "best" = the highest predicted IoU, "largest"/"smallest" = by area, "all" = every output.
MASK_MODES = ("single", "best", "largest", "smallest", "all")
