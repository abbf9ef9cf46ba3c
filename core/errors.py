"""User-facing errors of the core: one line that says what is wrong and what to do."""

from __future__ import annotations


class QuickSamError(Exception):
    """A problem with the user's input that they can fix; the message says how."""


class RasterError(QuickSamError):
    """The raster cannot be encoded as given."""


class StoreError(QuickSamError):
    """A feature store is missing, corrupt, or does not match what it is used with."""


class CheckpointError(QuickSamError):
    """A checkpoint cannot be found, downloaded or verified."""


class Cancelled(QuickSamError):
    """The user cancelled the operation; everything finished so far is kept."""


class EncoderEnvironmentError(QuickSamError):
    """The Python that runs the encoder cannot: it is missing, or lacks (or cannot import) a package the encoder
    needs (torch, sam2, rasterio, ...). Building or repairing the encoder's environment fixes it."""
