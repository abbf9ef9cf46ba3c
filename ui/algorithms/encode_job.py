"""What quicksam:encoderaster hands to the encoder process: its command line, built from checked parameters
(QGIS layer; the encoder process itself never imports QGIS)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from qgis.core import QgsMultiBandColorRenderer, QgsProcessingException, QgsProviderRegistry, QgsRasterLayer
from qgis.PyQt.QtCore import QVariant

from ...core.defaults import DEFAULT_MODEL, DEFAULT_TILE_SIZE, default_overlap
from ..i18n import tr as _tr


def build_encode_args(raster: str, store: str, *, model: str = DEFAULT_MODEL,
                      bands: Sequence[int] = (),
                      extent: Optional[Tuple[float, float, float, float]] = None,
                      checkpoint: str = "", random_weights: bool = False, overlap: Optional[int] = None,
                      batch_size: int = 1, device: str = "auto", tile_size: int = 0,
                      resolution: Optional[float] = None, levels: Sequence[float] = (1.0,),
                      workers: int = 0, scheduler: str = "", feature_dtype: str = "float16") -> List[str]:
    """Arguments of `quicksam.cli` (after `-m quicksam.cli`) for one encode.

    `extent` is (xmin, ymin, xmax, ymax) in the raster's CRS; `bands` 1-based, fed as red, green and blue; the
    other settings as `encode_options`.
    Options use the `--name=value` form so that values starting with "-" (a negative coordinate, an
    odd file name) are never taken for options.
    """
    args = ["encode", raster, store]
    if bands:
        args.append("--bands=" + ",".join(str(int(band)) for band in bands))
    if extent is not None:
        args.append("--extent=" + ",".join(repr(float(value)) for value in extent))
    return args + encode_options(
        model=model, checkpoint=checkpoint, random_weights=random_weights, overlap=overlap, batch_size=batch_size,
        device=device, tile_size=tile_size, resolution=resolution, levels=levels, workers=workers,
        scheduler=scheduler, feature_dtype=feature_dtype)


def encode_options(*, model: str = DEFAULT_MODEL, checkpoint: str = "", random_weights: bool = False,
                   overlap: Optional[int] = None, batch_size: int = 1, device: str = "auto", tile_size: int = 0,
                   resolution: Optional[float] = None, levels: Sequence[float] = (1.0,), workers: int = 0,
                   scheduler: str = "", feature_dtype: str = "float16") -> List[str]:
    """The `quicksam encode` options of the settings every encode takes, one raster or many, as `--name=value`.

    `tile_size` 0 = the model's native size; `overlap` None = `default_overlap` of the tile size (a quarter of it),
    as the CLI's own default; `resolution` the finest level's ground resolution (map units per pixel, None = the
    raster's own), `levels` factors of it (core/levels.py); `workers` processes of a Dask cluster on this machine
    (0: the encoder process alone), `scheduler` an existing Dask cluster's address ("": none; core/cluster.py),
    `feature_dtype` the stored precision (float16, float32, int8: core/tile_codec.py).
    """
    args = [f"--model={model}"]
    if checkpoint:
        args.append(f"--checkpoint={checkpoint}")
    if random_weights:
        args.append("--random-weights")
    if overlap is None:
        overlap = default_overlap(tile_size or DEFAULT_TILE_SIZE)
    args.append(f"--overlap={int(overlap)}")
    args.append(f"--batch-size={int(batch_size)}")
    args.append(f"--device={device}")
    if tile_size:
        args.append(f"--tile-size={int(tile_size)}")
    if resolution is not None:
        args.append(f"--resolution={float(resolution)!r}")
    if tuple(levels) != (1.0,):
        args.append("--levels=" + ",".join(f"{float(factor):g}" for factor in levels))
    if workers:
        args.append(f"--workers={int(workers)}")
    if scheduler:
        args.append(f"--scheduler={scheduler}")
    if feature_dtype != "float16":
        args.append(f"--feature-dtype={feature_dtype}")
    return args


def raster_file_path(layer: QgsRasterLayer) -> str:
    """The file (or GDAL /vsi path) behind a raster layer, which the encoder process can open.

    Raises QgsProcessingException when the layer is not backed by a readable file.
    """
    name = layer.name()
    save_first = _tr("Save it to a file first (right-click the layer > Export > Save As…, "
                     "format GeoTIFF) and encode that file.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            _tr("The layer '{name}' is not a file-based raster (its pixels come from the '{provider}' "
                "provider), so the encoder process cannot read it.").format(
                name=name, provider=layer.providerType()) + " " + save_first)
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = str(parts.get("path") or "")
    if parts.get("layerName"):
        raise QgsProcessingException(
            _tr("The layer '{name}' is a table inside a container file ({path}), which the encoder "
                "cannot open directly.").format(name=name, path=path) + " " + save_first)
    if parts.get("vsiPrefix"):
        path = str(parts["vsiPrefix"]) + path + str(parts.get("vsiSuffix") or "")
    if path.startswith("/vsimem/"):
        raise QgsProcessingException(
            _tr("The layer '{name}' exists only in memory ({path}).").format(name=name, path=path)
            + " " + save_first)
    if not path.startswith("/vsi") and not Path(path).is_file():
        raise QgsProcessingException(
            _tr("The layer '{name}' does not point to an existing file ('{path}').").format(
                name=name, path=path) + " " + save_first)
    return path


def band_numbers_from_text(value: Any) -> List[int]:
    """Band numbers from BANDS given as text ("3;2;1", "3,2,1", "3 2 1") or a list of such texts.

    QGIS splits text only on ";" and turns any other text into band 0, which would silently mean "the
    default bands"; qgis_process and hand-written calls pass text. QgsProcessingException on anything
    that is not a band number.
    """
    texts = [value] if isinstance(value, str) else [str(item) for item in value]
    tokens = [token for text in texts for token in re.split(r"[\s;,]+", text.strip()) if token]
    try:
        return [int(token) for token in tokens]
    except ValueError:
        raise QgsProcessingException(
            _tr("BANDS must be band numbers such as 3;2;1 (or repeat BANDS=3 BANDS=2 BANDS=1 with "
                "qgis_process); got '{value}'.").format(value=value)) from None


def renderer_bands(layer: QgsRasterLayer) -> Optional[List[int]]:
    """The layer's red, green and blue bands (1-based) when its renderer is a multiband colour one with all three
    set; None otherwise (a single-band, paletted or pseudocolour layer)."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsMultiBandColorRenderer):
        return None
    bands = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
    return bands if all(1 <= band <= layer.bandCount() for band in bands) else None


def red_green_blue(chosen: Sequence[Optional[int]], layer: QgsRasterLayer) -> List[int]:
    """The bands fed to the model as red, green and blue, from the (red, green, blue) bands chosen (None or 0 =
    not chosen): a band not chosen is the one the layer's renderer shows in that colour. With none chosen and no
    colour renderer, [] (the encoder's own default: the bands labelled red/green/blue, else the first three; one
    band repeated as grey). QgsProcessingException when some are chosen and the others cannot be filled in, or a
    band does not exist."""
    defaults = renderer_bands(layer)
    if not any(chosen):
        return defaults or []
    if defaults is None and not all(chosen):
        raise QgsProcessingException(
            _tr("Choose all three of the Red, Green and Blue bands, or none of them: '{name}' is not shown with a "
                "colour renderer, so the others cannot be taken from it.").format(name=layer.name()))
    bands = [int(band) if band else defaults[index] for index, band in enumerate(chosen)]
    check_bands_exist(bands, layer)
    return bands


def check_bands_exist(bands: List[int], layer: QgsRasterLayer) -> None:
    """QgsProcessingException naming the first of `bands` (1-based) that `layer` does not have."""
    missing = [band for band in bands if not 1 <= band <= layer.bandCount()]
    if missing:
        raise QgsProcessingException(
            _tr("Band {band} does not exist: '{name}' has {count} band(s).").format(
                band=missing[0], name=layer.name(), count=layer.bandCount()))


def is_given(value: Any) -> bool:
    """Whether an optional parameter's value was given: not missing, None, a NULL QVariant or ""."""
    if isinstance(value, QVariant):
        return not value.isNull()
    return value is not None and value != ""


@dataclass(frozen=True)
class EncoderJob:
    """Everything the encoder process needs, copied from the parameters on the main thread."""

    args: List[str]
    python: str
    store: str
    #: The raster file (or GDAL /vsi path) being encoded.
    raster: str = ""
