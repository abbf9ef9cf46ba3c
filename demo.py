"""`make demo`: encode a real raster end to end and print where the store is and its summary.

Uses the official SAM 2.1 tiny checkpoint when it is cached or can be downloaded; otherwise seeded
random weights, and says so loudly (the store records it too).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from .cli import EventWriter
from .encoder.catalogue import DEFAULT_MODEL, default_checkpoint_for
from .encoder.errors import QuickSamError

LOG = logging.getLogger("quicksam")
DEMO_RASTER = Path(__file__).resolve().parent.parent / "shared" / "data" / "L7_ETMs.tif"
DEMO_BANDS = [3, 2, 1]  # Landsat 7 red, green, blue


def find_demo_raster(explicit: Optional[str]) -> Path:
    candidates = [Path(explicit)] if explicit else [DEMO_RASTER, Path.cwd().parent / "shared/data/L7_ETMs.tif"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise QuickSamError(f"demo raster not found (looked for {', '.join(map(str, candidates))}); "
                        "pass one with --raster PATH")


def real_checkpoint_or_none(model: str, events: EventWriter):
    """The official checkpoint if cached or downloadable now, else None (random weights)."""
    from .encoder.checkpoints import cached_checkpoint, resolve_checkpoint

    cached = cached_checkpoint(model)
    if cached is not None:
        return cached
    name = default_checkpoint_for(model).name
    try:
        return resolve_checkpoint(name, model=model)
    except QuickSamError as exc:
        events.emit("log", message=f"NOTE: could not get the real checkpoint '{name}' ({exc}).")
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="quicksam.demo")
    parser.add_argument("--output", type=Path, default=Path.home() / "quicksam-demo")
    parser.add_argument("--raster")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    events = EventWriter(as_json=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from .encoder.pipeline import EncodeRequest, encode_raster

    try:
        raster = find_demo_raster(args.raster)
        checkpoint = real_checkpoint_or_none(args.model, events)
        suffix = "real" if checkpoint else "random"
        store_dir = args.output / f"{raster.stem}_{args.model}_{suffix}.qsam"
        if checkpoint is None:
            events.emit("log", message="NOTE: encoding with seeded RANDOM weights: the pipeline is real, the "
                                       "features are not; the store's manifest says random_weights=true.")
        request = EncodeRequest(raster=str(raster), store=store_dir, model=args.model, checkpoint=checkpoint,
                                bands=DEMO_BANDS)
        store, stats = encode_raster(request, progress=lambda e: events.emit(
            "progress", done=e.done, total=e.total, percent=e.percent))
    except QuickSamError as exc:
        sys.stderr.write(f"quicksam demo: error: {exc}\n")
        return 1
    summary = store.summary()
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(f"\nFeature store: {store.root}\nTile index (open in QGIS): {store.root / 'tile_index.gpkg'}\n"
                     f"Encoded {stats.tiles_encoded} tile(s) in {stats.total_seconds:.1f} s "
                     f"({'RANDOM weights' if checkpoint is None else checkpoint.name}).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
