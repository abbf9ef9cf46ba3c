"""Where a segment everything run is (no QGIS): the event its `progress` callback gets, in one process as on a
Dask cluster (automatic.py sends it; ui/algorithms/segment_all_report.py words it for Processing and the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class SegmentAllProgress:
    """Where a run is: `done` of `total` tiles finished (resumed ones included), `objects` committed so far.
    Sent when a tile is finished (`batches` 0) and, inside a tile, after each batch of points: `tile_id` is
    then the tile being segmented, `batch` of its `batches` batches decoded. `points_skipped`: on a finished
    tile with the opt-in skip_covered_points, its grid points left out inside masks already kept (None: off,
    or a batch event)."""

    done: int
    total: int
    tile_id: str
    objects: int
    batch: int = 0
    batches: int = 0
    points_skipped: Optional[int] = None

    @property
    def tile_finished(self) -> bool:
        return self.batches == 0

    @property
    def fraction(self) -> float:
        """The share of the run done, 0..1: finished tiles plus the running tile's share of batches."""
        inside = self.batch / self.batches if self.batches else 0.0
        return min((self.done + inside) / max(self.total, 1), 1.0)
