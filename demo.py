"""`make demo`: encode a real raster end to end, segment a few prompts on it, segment everything on it,
and print the paths.

Uses the official SAM 2.1 tiny checkpoint when it is cached or can be downloaded; otherwise seeded
random weights, and says so loudly (the store records it too). Segmenting goes through
`quicksam segment` (the Processing algorithm in a headless QGIS); the PNG is a QGIS map render of the
raster with the polygons and the prompts. Segment everything goes through `quicksam segment-all`
(16 x 16 points per tile, to keep the demo short).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .cli.events import EventWriter
from .core.catalogue import default_checkpoint_for
from .core.defaults import DEFAULT_MODEL
from .core.errors import QuickSamError

if TYPE_CHECKING:
    from .core.store import FeatureStore
    from .encoder.checkpoints import ResolvedCheckpoint

DEMO_RASTER = Path(__file__).resolve().parent.parent / "shared" / "data" / "L7_ETMs.tif"
DEMO_BANDS = [3, 2, 1]  # Landsat 7 red, green, blue
#: Demo prompts as fractions of the raster's width and height: (x, y, label); one object each.
DEMO_POINTS = [(0.30, 0.35, 1), (0.62, 0.55, 1), (0.45, 0.80, 1)]
RANDOM_EVERYTHING_NOTE = ("\n  (random weights: their masks seldom pass SAM's default score thresholds, so few or no "
                          "objects; with the real checkpoint this finds the raster's objects)")


def find_demo_raster(explicit: Optional[str]) -> Path:
    candidates = [Path(explicit)] if explicit else [DEMO_RASTER, Path.cwd().parent / "shared/data/L7_ETMs.tif"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise QuickSamError(f"demo raster not found (looked for {', '.join(map(str, candidates))}); "
                        "pass one with --raster PATH")


def real_checkpoint_or_none(model: str, events: EventWriter) -> Optional[ResolvedCheckpoint]:
    """The official checkpoint if cached or downloadable now, else None (random weights)."""
    from .encoder.checkpoints import cached_checkpoint, resolve_checkpoint

    cached = cached_checkpoint(model)
    if cached is not None:
        return cached
    name = default_checkpoint_for(model).name
    try:
        return resolve_checkpoint(name, model=model)
    except QuickSamError as exc:
        events.info(f"NOTE: could not get the real checkpoint '{name}' ({exc}).")
        return None


def write_demo_prompts(store: FeatureStore, path: Path) -> Path:
    """A GeoJSON of DEMO_POINTS in the raster's CRS (named in the file)."""
    from .core.geo import pixel_to_map

    raster = store.manifest.raster
    features = []
    for i, (fx, fy, label) in enumerate(DEMO_POINTS, start=1):
        x, y = pixel_to_map(store.geotransform, fx * raster.width, fy * raster.height)
        features.append({"type": "Feature", "properties": {"object": i, "label": label},
                         "geometry": {"type": "Point", "coordinates": [x, y]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def segment_demo_prompts(store: FeatureStore, output_dir: Path) -> Path:
    """Run `quicksam segment` on the demo prompts; returns the GeoPackage."""
    import subprocess

    prompts = write_demo_prompts(store, output_dir / "demo_prompts.geojson")
    gpkg = output_dir / "demo_segments.gpkg"
    result = subprocess.run([sys.executable, "-m", "quicksam.cli", "segment", str(store.root), "--prompts",
                             str(prompts), "--prompts-crs", store.manifest.raster.crs_name,
                             "--group-field", "object", "--label-field", "label", "--output", str(gpkg),
                             "--overwrite"], capture_output=True, text=True)
    if result.returncode != 0:
        raise QuickSamError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "segment failed")
    return gpkg


def segment_everything_demo(store: FeatureStore, output_dir: Path) -> dict:
    """Run `quicksam segment-all` on the whole store; returns its JSON summary."""
    import subprocess

    gpkg = output_dir / "demo_everything.gpkg"
    result = subprocess.run([sys.executable, "-m", "quicksam.cli", "segment-all", str(store.root), "--output",
                             str(gpkg), "--points-per-side", "16", "--overwrite"], capture_output=True, text=True)
    if result.returncode != 0:
        raise QuickSamError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "segment-all failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _render(raster: Path, bands: Sequence[int], gpkg: Path, prompts: Path, png: Path) -> None:
    from qgis.core import (
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsMultiBandColorRenderer,
        QgsRasterLayer,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    raster_layer = QgsRasterLayer(str(raster), "raster")
    renderer = QgsMultiBandColorRenderer(raster_layer.dataProvider(), *bands)
    raster_layer.setRenderer(renderer)
    polygons = QgsVectorLayer(f"{gpkg}|layername=segments", "segments", "ogr")
    polygons.renderer().symbol().setColor(QColor(255, 140, 0, 110))
    points = QgsVectorLayer(str(prompts), "prompts", "ogr")
    points.setCrs(raster_layer.crs())
    points.renderer().symbol().setColor(QColor(0, 200, 0))
    points.renderer().symbol().setSize(3)
    settings = QgsMapSettings()
    settings.setLayers([points, polygons, raster_layer])
    settings.setDestinationCrs(raster_layer.crs())
    settings.setExtent(raster_layer.extent())
    settings.setOutputSize(QSize(800, 800))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(str(png))


def render_png(raster: Path, bands: Sequence[int], gpkg: Path, prompts: Path, png: Path) -> Path:
    """A QGIS map render (headless) of the raster with the polygons and the prompt points on top."""
    import os

    from qgis.core import QgsApplication

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QgsApplication([], True)
    app.initQgis()
    try:
        _render(raster, bands, gpkg, prompts, png)  # its layers are gone before QGIS exits
    finally:
        app.exitQgis()
    return png


def main(argv: Optional[Sequence[str]] = None) -> int:
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
            events.info("NOTE: encoding with seeded RANDOM weights: the pipeline is real, the features are not; "
                        "the store's manifest says random_weights=true.")
        request = EncodeRequest(raster=str(raster), store=store_dir, model=args.model, checkpoint=checkpoint,
                                bands=DEMO_BANDS)
        store, stats = encode_raster(request, progress=lambda e: events.progress(e.done, e.total, "tiles"))
        gpkg = segment_demo_prompts(store, args.output)
        png = render_png(raster, DEMO_BANDS, gpkg, args.output / "demo_prompts.geojson",
                         args.output / "demo_segments.png")
        everything = segment_everything_demo(store, args.output)
    except QuickSamError as exc:
        sys.stderr.write(f"quicksam demo: error: {exc}\n")
        return 1
    summary = store.summary()
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(f"\nFeature store: {store.root}\nTile index (open in QGIS): {store.root / 'tile_index.gpkg'}\n"
                     f"Encoded {stats.tiles_encoded} tile(s) in {stats.total_seconds:.1f} s "
                     f"({'RANDOM weights' if checkpoint is None else checkpoint.name}).\n"
                     f"Segmented {len(DEMO_POINTS)} prompts: {gpkg} (layer 'segments')\n"
                     f"Picture of the polygons over the raster: {png}\n"
                     f"Segment everything: {everything['objects']} objects from {everything['tiles']} tile(s): "
                     f"{everything['output']} (layer 'segments')"
                     f"{RANDOM_EVERYTHING_NOTE if checkpoint is None else ''}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
