"""Whether a store may be resumed by a run: the first difference between its manifest and the run's (no QGIS)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from .levels import same_factor
from .manifest import Manifest


def describe_difference(existing: Manifest, wanted: Manifest) -> Optional[str]:
    """The first difference that forbids resuming `existing` with a run that would write `wanted`, said
    plainly ("model: store has 'a', this run has 'b'"; for the feature dtype, with the option that resumes
    it), or None. Compared: the model (name, image size, random weights, seed), the checkpoint (unless
    `wanted` has random weights not hashed yet), the raster's fingerprint, the bands and stretch mode, the
    feature dtype and the tile grid."""
    old, new = existing, wanted
    fields = [("model", old.model.name, new.model.name),
              ("model.image_size", old.model.image_size, new.model.image_size),
              ("model.random_weights", old.model.random_weights, new.model.random_weights),
              ("model.seed", old.model.seed, new.model.seed),
              ("checkpoint", old.checkpoint.sha256, new.checkpoint.sha256),
              ("raster contents", old.raster.fingerprint, new.raster.fingerprint),
              ("preprocessing.bands", list(old.preprocessing.bands), list(new.preprocessing.bands)),
              ("preprocessing.stretch_mode", old.preprocessing.stretch.mode, new.preprocessing.stretch.mode),
              ("features.dtype", old.features.dtype, new.features.dtype)]
    for label, before, after in fields:
        if label == "checkpoint" and after is None:
            continue  # random weights: identified by model, seed and size, hashed once built
        if before != after:
            # the dtype is the one setting a user may forget: say how to resume (the grid's options are many)
            advice = f": run it again with --feature-dtype {before} to resume it" if label == "features.dtype" else ""
            return f"{label}: store has {before!r}, this run has {after!r}{advice}"
    if not same_factor(old.pixel_grid.factor, new.pixel_grid.factor):
        return f"level: store has pixels {old.pixel_grid.factor:g}x the raster's, this run {new.pixel_grid.factor:g}x"
    if dataclasses.replace(old.grid, tiles=old.grid.regular_tiles) != new.grid:
        return "tile grid (overlap, extent or tile size) differs"
    return None
