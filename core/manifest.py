"""The store contract: manifest.json as typed, frozen records, read and written only here (no QGIS, no torch).

A manifest says what produced a store's features: `model`, `checkpoint`, `preprocessing`, `raster`, `grid`,
`features`, `decoder`, and (version 3) `level`, plus `levels` in a multi-scale store's root (docs/store-format.md),
laid out as these records, field for field. Version 4 (written now) adds `features.codec`: tiles compressed in
their files (core/tile_codec.py); without it a version-4 store's tiles are raw, as before. Version 2 (no level:
the raster's own pixels) is read as is; version 1 also holds `preprocessing.stretch_mode` and
`grid.raster_width/height`, converted on reading. A store keeps its version when the encoder rewrites its
manifest, so older QuickSAMs still read it, unless levels are added (then the version written now).
Newer versions are refused: "update QuickSAM".

Coordinates: pixel offsets and sizes are pixels of the store's level (the raster's own pixels at factor 1;
column = x, row = y, (0, 0) the top-left corner of the top-left pixel); map coordinates are in the raster's
CRS (`raster.crs_wkt`) through the level's geotransform (`Manifest.pixel_grid`).

Errors: `Manifest.from_json` raises ManifestProblem naming the first wrong key (core/manifest_checks.py);
`read_manifest` and `write_manifest` raise StoreError, one line saying what to do.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .errors import StoreError
from .levels import LevelRef, LevelSection, level_grid
from .manifest_checks import ManifestProblem, shown, validate_manifest
from .mask_decoding import DecoderSettings
from .store_layout import DECODER_ONNX, MANIFEST
from .tile_files import atomic_write_bytes
from .tiling import PixelWindow, Tile, TileGrid

FORMAT_NAME = "quicksam-feature-store"
#: The version this QuickSAM writes (4: `features.codec`, core/tile_codec.py; 3: the `level` section, and the
#: root's `levels`, core/levels.py).
FORMAT_VERSION = 4
#: The versions this QuickSAM reads (1 is converted on reading; 1 and 2 are one native level).
READABLE_VERSIONS = (1, 2, 3, 4)


def _coerce(record: Any, **kinds: type) -> None:
    """Set each named sequence field of a frozen record to a tuple of `kind` values (JSON lists, numpy
    numbers), so that a record built in code equals the one read back from its file."""
    for name, kind in kinds.items():
        object.__setattr__(record, name, tuple(kind(v) for v in getattr(record, name)))


@dataclass(frozen=True)
class ModelSection:
    """The model that encoded the tiles: `name` in the catalogue (core/catalogue.py, e.g.
    "sam2.1_hiera_t"), `family` "sam2" or "sam1", `image_size` its square input in pixels (equal to
    grid.tile_size), `random_weights` (seeded random weights of `seed`, None with a checkpoint), `config`
    the package's model config (informational)."""

    name: str
    family: str
    image_size: int
    random_weights: bool
    seed: Optional[int]
    config: Optional[str] = None


@dataclass(frozen=True)
class CheckpointSection:
    """The weights: `sha256` (64 lowercase hex digits) of the checkpoint file, or of the weight tensors for
    random weights (None only until a random model is built); `name` and `source` (path or URL) are shown
    to people."""

    sha256: Optional[str]
    name: Optional[str] = None
    source: Optional[str] = None


@dataclass(frozen=True)
class StretchSection:
    """The linear stretch of each chosen band from [low, high] (raw raster values) to 0-255 (encoder/
    normalise.Stretch): `mode` "percentile" or "none", `low`/`high` one value per band (low < high),
    `percentiles` (low, high) in percent, `sampled_pixels` how many pixels the percentiles were taken of."""

    mode: str
    low: Tuple[float, ...]
    high: Tuple[float, ...]
    percentiles: Tuple[float, float]
    sampled_pixels: int

    def __post_init__(self) -> None:   # lists from JSON, numbers of any type: as read back from the file
        _coerce(self, low=float, high=float, percentiles=float)


@dataclass(frozen=True)
class PreprocessingSection:
    """How raster pixels became model input: `bands` 1 to 3 one-based band numbers fed as R, G, B;
    `stretch`; `nodata_fill` the 0-255 value given to invalid pixels (nodata, NaN, masked, padding)."""

    bands: Tuple[int, ...]
    stretch: StretchSection
    nodata_fill: int = 0

    def __post_init__(self) -> None:
        _coerce(self, bands=int)


@dataclass(frozen=True)
class RasterSection:
    """The encoded raster: `path` where it was (stores match rasters by `fingerprint`, a SHA-256 of its
    structure and sampled bytes, never by path), `width`/`height` in pixels, `crs_wkt` its CRS (WKT),
    `crs_name` a short name ("EPSG:32633") or None, `geotransform` GDAL's (x0, pixel width, row rotation,
    y0, column rotation, pixel height) in CRS units from pixel (col, row) to map (x, y); `count` bands,
    `dtypes` numpy type per band, `nodata` value (NaN possible) or None: informational."""

    path: str
    fingerprint: str
    width: int
    height: int
    crs_wkt: str
    crs_name: Optional[str]
    geotransform: Tuple[float, float, float, float, float, float]
    count: Optional[int] = None
    dtypes: Tuple[str, ...] = ()
    nodata: Optional[float] = None

    def __post_init__(self) -> None:
        _coerce(self, geotransform=float, dtypes=str)
        if self.nodata is not None:
            object.__setattr__(self, "nodata", float(self.nodata))


@dataclass(frozen=True)
class ArrayLayout:
    """One feature map in a tile file: float (C, H, W) of `shape`, starting at element `offset` of the flat
    array (offsets in elements, the arrays back to back in this order)."""

    name: str
    shape: Tuple[int, int, int]
    offset: int

    def __post_init__(self) -> None:
        _coerce(self, shape=int)

    @property
    def size(self) -> int:
        """Number of elements, C * H * W."""
        return int(math.prod(self.shape))


def feature_layout(specs: Iterable[Tuple[str, Tuple[int, int, int]]]) -> List[ArrayLayout]:
    """(name, (C, H, W)) of each feature map, in file order -> their layout, back to back."""
    layout, offset = [], 0
    for name, shape in specs:
        item = ArrayLayout(name, shape, offset)
        layout.append(item)
        offset += item.size
    return layout


@dataclass(frozen=True)
class FeaturesSection:
    """The tile files: `dtype` "float16" or "float32", or "int8" (quantised, with a codec); `arrays` the layout
    of one tile's flat array (SAM 2: image_embed (256, S/16, S/16), high_res_feats_0 (32, S/4, S/4),
    high_res_feats_1 (64, S/8, S/8); SAM: image_embed (256, S/16, S/16); S the tile size), empty until the
    model is built; `codec` how a tile file holds them (core/tile_codec.py; None: a raw .npy, versions 1-3)."""

    dtype: str
    arrays: Tuple[ArrayLayout, ...] = ()
    codec: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", tuple(self.arrays))

    @property
    def names(self) -> List[str]:
        return [item.name for item in self.arrays]

    @property
    def shapes(self) -> Dict[str, Tuple[int, int, int]]:
        """(C, H, W) of each feature map, by name, in file order."""
        return {item.name: item.shape for item in self.arrays}


@dataclass(frozen=True)
class DecoderSection:
    """`onnx` the decoder file in the store (always decoder.onnx); `settings` how one mask is chosen
    (SAM 2's dynamic multimask), None until the model is built."""

    onnx: str = DECODER_ONNX
    settings: Optional[DecoderSettings] = None


@dataclass(frozen=True)
class Manifest:
    """manifest.json of a feature store. `grid` is the tile grid (pixels of the store's level, see
    core/tiling.py); `level` that pixel grid (None: the raster's own, as in versions 1 and 2); `levels` the
    levels of a multi-scale store, in its root manifest only (core/levels.py); `format_version` the version
    read from, or to write (FORMAT_VERSION for a new store); `quicksam_version` the QuickSAM that made the
    store, `created` when (ISO 8601, UTC)."""

    model: ModelSection
    checkpoint: CheckpointSection
    preprocessing: PreprocessingSection
    raster: RasterSection
    grid: TileGrid
    features: FeaturesSection
    decoder: DecoderSection = field(default_factory=DecoderSection)
    quicksam_version: Optional[str] = None
    created: Optional[str] = None
    format_version: int = FORMAT_VERSION
    level: Optional[LevelSection] = None
    levels: Tuple[LevelRef, ...] = ()

    def __post_init__(self) -> None:   # version 3 always says its level: the raster's own pixels by default
        if self.level is None and self.format_version >= 3:
            object.__setattr__(self, "level", self.pixel_grid)

    @property
    def pixel_grid(self) -> LevelSection:
        """The store's level: its `level`, or the raster's own pixels (factor 1) for a store without one."""
        raster = self.raster
        return self.level or level_grid(raster.width, raster.height, raster.geotransform, 1.0)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """The records of a parsed manifest.json of a readable version (1 is converted). ManifestProblem
        naming the first wrong key: `format` not ours, `format_version` not readable (a newer one: "update
        QuickSAM"), or any part missing or wrong (core/manifest_checks.validate_manifest)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            found = data.get("format") if isinstance(data, dict) else data
            raise ManifestProblem("format", f"must be {FORMAT_NAME!r}, found {shown(found)}")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise ManifestProblem("format_version", f"is {version_problem(version)}")
        validate_manifest(data)
        return _manifest(data)

    def to_json(self) -> Dict[str, Any]:
        """This manifest as JSON-ready values, in the layout of its `format_version` (1 or 2)."""
        grid = self.grid.to_dict()
        preprocessing = _json(self.preprocessing)
        decoder = _json(self.decoder)
        if self.format_version == 1:
            preprocessing["stretch_mode"] = self.preprocessing.stretch.mode
            if decoder["settings"] is None:
                del decoder["settings"]
        else:
            del grid["raster_width"], grid["raster_height"]   # the raster's width and height
        features = _json(self.features)
        if features["codec"] is None:
            del features["codec"]   # raw tiles: the features section of versions 1 to 3
        data = {"format": FORMAT_NAME, "format_version": self.format_version,
                "quicksam_version": self.quicksam_version, "created": self.created,
                "model": _json(self.model), "checkpoint": _json(self.checkpoint), "preprocessing": preprocessing,
                "raster": _json(self.raster), "grid": grid, "features": features, "decoder": decoder}
        if self.format_version >= 3:
            data["level"] = _json(self.pixel_grid)
            if self.levels:
                data["levels"] = [_json(item) for item in self.levels]
        return data


def _json(section: Any) -> Dict[str, Any]:
    """A section's fields as JSON-ready values (tuples as lists), in field order."""
    return json.loads(json.dumps(dataclasses.asdict(section)))


def version_problem(version: Any) -> str:
    """A `format_version` this QuickSAM does not read, and what to do: "3, written by a newer QuickSAM
    (...): update QuickSAM to open this store"."""
    readable = ", ".join(str(v) for v in READABLE_VERSIONS[:-1]) + f" and {READABLE_VERSIONS[-1]}"
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return (f"{version}, written by a newer QuickSAM (this one reads versions {readable}): update QuickSAM "
                "to open this store")
    return f"{shown(version)}, this QuickSAM reads versions {readable}; encode the raster again with this version"


def _manifest(data: Dict[str, Any]) -> Manifest:
    """The records of a manifest that passed validate_manifest (either version)."""
    raster = _raster(data["raster"])
    level = LevelSection(**data["level"]) if "level" in data else None
    size = (level.width, level.height) if level else (raster.width, raster.height)
    return Manifest(model=_model(data["model"]), checkpoint=_checkpoint(data["checkpoint"]),
                    preprocessing=_preprocessing(data["preprocessing"]), raster=raster,
                    grid=_grid(data["grid"], size), features=_features(data["features"]),
                    decoder=_decoder(data["decoder"]), quicksam_version=data.get("quicksam_version"),
                    created=data.get("created"), format_version=data["format_version"], level=level,
                    levels=tuple(LevelRef(**item) for item in data.get("levels", ())))


def _model(data: Dict[str, Any]) -> ModelSection:
    return ModelSection(name=data["name"], family=data["family"], image_size=data["image_size"],
                        random_weights=data["random_weights"], seed=data["seed"], config=data.get("config"))


def _checkpoint(data: Dict[str, Any]) -> CheckpointSection:
    return CheckpointSection(sha256=data["sha256"], name=data.get("name"), source=data.get("source"))


def _preprocessing(data: Dict[str, Any]) -> PreprocessingSection:
    stretch = data["stretch"]
    return PreprocessingSection(
        bands=data["bands"], nodata_fill=data.get("nodata_fill", 0),
        stretch=StretchSection(mode=stretch["mode"], low=stretch["low"], high=stretch["high"],
                               percentiles=stretch["percentiles"], sampled_pixels=stretch["sampled_pixels"]))


def _raster(data: Dict[str, Any]) -> RasterSection:
    return RasterSection(path=data["path"], fingerprint=data["fingerprint"], width=data["width"],
                         height=data["height"], crs_wkt=data["crs_wkt"], crs_name=data.get("crs_name"),
                         geotransform=data["geotransform"], count=data.get("count"), dtypes=data.get("dtypes", ()),
                         nodata=data.get("nodata"))


def _grid(data: Dict[str, Any], size: Tuple[int, int]) -> TileGrid:
    return TileGrid(raster_width=size[0], raster_height=size[1], tile_size=data["tile_size"],
                    overlap=data["overlap"], window=PixelWindow(**data["window"]),
                    tiles=tuple(Tile(**tile) for tile in data["tiles"]))


def _features(data: Dict[str, Any]) -> FeaturesSection:
    return FeaturesSection(dtype=data["dtype"], codec=data.get("codec"), arrays=tuple(
        ArrayLayout(item["name"], item["shape"], item["offset"]) for item in data["arrays"]))


def _decoder(data: Dict[str, Any]) -> DecoderSection:
    settings = data.get("settings")
    return DecoderSection(onnx=data["onnx"], settings=None if settings is None else DecoderSettings(**settings))


# -- the file ---------------------------------------------------------------------------------------------

def read_manifest(root: Path) -> Manifest:
    """STORE/manifest.json of the store folder `root` as records. StoreError (one line naming the store, the
    key and the fix) when it is unreadable, not JSON or not an object, not a QuickSAM manifest, of a version
    this QuickSAM does not read (a newer one: "update QuickSAM"), or damaged."""
    path = Path(root) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise StoreError(f"{MANIFEST} of store '{root}' is nested too deeply to be a QuickSAM manifest; the "
                         "store is damaged: encode the raster again into a new folder") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"the manifest of store '{root}' is unreadable ({exc}); encode the raster "
                         "again into a new folder") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{MANIFEST} of store '{root}' must hold a JSON object, found {shown(data)}; the "
                         "store is damaged: encode the raster again into a new folder")
    if data.get("format") != FORMAT_NAME:
        raise StoreError(f"'{path}' is not a QuickSAM manifest (its format is {shown(data.get('format'))}, not "
                         f"{FORMAT_NAME!r}); choose the folder that 'quicksam encode' wrote, or encode the raster "
                         "again into a new folder")
    version = data.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise StoreError(f"store '{root}' has format version {version_problem(version)}")
    try:
        return Manifest.from_json(data)
    except ManifestProblem as exc:
        raise StoreError(f"{MANIFEST} of store '{root}': {exc}; the store is damaged: encode the raster "
                         "again into a new folder") from None


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Write STORE/manifest.json atomically (temp file + rename) in the layout of `manifest.format_version`.
    It is checked first as a reader will check it: StoreError, and nothing written, when it would not be
    read back as the same manifest."""
    text = json.dumps(manifest.to_json())
    try:
        read_back = Manifest.from_json(json.loads(text))
    except ManifestProblem as exc:
        raise StoreError(f"QuickSAM would write a {MANIFEST} it cannot read into store '{root}' ({exc}); "
                         "nothing was written: please report this") from None
    if json.dumps(read_back.to_json()) != text:   # as text: a NaN nodata is not equal to itself
        raise StoreError(f"QuickSAM would write a {MANIFEST} into store '{root}' that reads back differently; "
                         "nothing was written: please report this")
    # Version 1 was written with sorted keys; version 2 keeps the sections' order.
    text = json.dumps(manifest.to_json(), indent=1, sort_keys=manifest.format_version == 1)
    atomic_write_bytes(Path(root) / MANIFEST, text.encode())


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "READABLE_VERSIONS", "ArrayLayout", "CheckpointSection", "DecoderSection",
           "FeaturesSection", "Manifest", "ManifestProblem", "ModelSection", "PreprocessingSection", "RasterSection",
           "StretchSection", "feature_layout", "read_manifest", "write_manifest"]
