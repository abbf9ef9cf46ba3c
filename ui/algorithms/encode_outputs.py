"""Where quicksam:encoderaster writes a store by default, and what QGIS does with a finished one: remember it for
its raster, and load its tile index into the project (QGIS layer).

Processing's own default for a folder output is its temporary folder, which QGIS deletes on exit and where the
Segment dock never looks; so "no folder chosen" and "the temporary folder" both mean a store beside the raster
(`<raster stem>.qsam`, found by the dock next to the raster), or in the folder of the setting
`quicksam/encode/store_folder` when the raster's folder is not writable or the raster is not a plain file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from qgis.core import (
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingUtils,
    QgsProject,
    QgsProperty,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, QThread, QVariant

from ...core.errors import QuickSamError
from ...core.store import FeatureStore
from ...encoder.online_sources import is_network_source, source_kind, source_stem
from ...interactive.store_lookup import STORE_SUFFIX, check_store_matches_layer
from .. import settings
from ..i18n import tr
from ..layer_stores import layer_raster_path, remember_layer_store
from ..layers import style_tile_index

#: How many `<stem>-N.qsam` names are tried beside a store of another raster or model before giving up.
_MAX_DEFAULT_NAMES = 99
#: The tile index's layer inside its GeoPackage (encoder/tile_index.py).
TILE_INDEX_LAYER = "tiles"


def wants_default_store(value: Any) -> bool:
    """True when the OUTPUT value names no folder of the user's: missing, empty, NULL, or Processing's temporary
    folder ("TEMPORARY_OUTPUT", or a folder inside QgsProcessingUtils.tempFolder(), which QGIS deletes on exit)."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink.staticValue() if value.sink.propertyType() == QgsProperty.Type.StaticProperty else None
    if isinstance(value, QVariant):
        value = None if value.isNull() else value.value()
    if value is None or not str(value).strip() or str(value) == QgsProcessing.TEMPORARY_OUTPUT:
        return True
    temporary = Path(QgsProcessingUtils.tempFolder()).resolve()
    return temporary == Path(str(value)).resolve() or temporary in Path(str(value)).resolve().parents


def default_store_folder(raster: str) -> Path:
    """The folder of a default store: the folder of the setting quicksam/encode/store_folder when the user set
    one; else the raster's own when it is a plain file in a writable folder; else `<documents>/QuickSAM`
    (settings.encode_store_folder)."""
    path = Path(raster)
    if settings.STORE_FOLDER.value().strip():
        return settings.encode_store_folder()
    local = source_kind(raster) in ("file", "service-file") and not raster.startswith("/vsi")  # not a URL
    if local and path.is_file() and os.access(path.parent, os.W_OK | os.X_OK):
        return path.parent
    return settings.encode_store_folder()


def default_store(raster: str, model: str) -> Path:
    """The default store of `raster` encoded with `model`: `<stem>.qsam` in `default_store_folder`, or the first
    `<stem>-N.qsam` that is free or already this raster's store of this model (which is resumed): another
    raster's or another model's store is never touched. QgsProcessingException when none is left."""
    folder = default_store_folder(raster)
    stem = source_stem(raster)  # a file's stem; for a web layer its host and zoom or layer
    for index in range(1, _MAX_DEFAULT_NAMES + 1):
        candidate = folder / (f"{stem}{STORE_SUFFIX}" if index == 1 else f"{stem}-{index}{STORE_SUFFIX}")
        if not candidate.exists() or _is_store_of(candidate, raster, model):
            return candidate
    raise QgsProcessingException(
        tr("{folder} already holds {count} feature stores named after '{stem}': choose a folder for the Feature "
           "store.").format(folder=folder, count=_MAX_DEFAULT_NAMES, stem=stem))


def _is_store_of(folder: Path, raster: str, model: str) -> bool:
    """True when `folder` is a store of `raster`'s pixels made with `model` (the encoder resumes it, or refuses it
    with its reason when another setting differs)."""
    try:
        store = FeatureStore.open(folder)
    except QuickSamError:
        return False
    if is_network_source(raster):  # recorded as given: no pixels are fetched to compare (online_sources.py)
        return store.manifest.model.name == model and store.manifest.raster.path == raster
    return store.manifest.model.name == model and check_store_matches_layer(store, raster) is None


@dataclass(frozen=True)
class EncodedStore:
    """A finished encode: the raster file, the store folder and its tile index (a GeoPackage of footprints)."""

    raster: str
    store: str
    tile_index: str


def load_tile_index_on_completion(encoded: EncodedStore, context: QgsProcessingContext) -> None:
    """Ask Processing to add the store's tile index to the context's project once the run is over (the dialogs
    do; processing.run and qgis_process load nothing), outlined so that the raster stays visible."""
    project = context.project()
    if project is None:
        return
    uri = f"{encoded.tile_index}|layername={TILE_INDEX_LAYER}"
    name = tr("{raster} tiles (QuickSAM)").format(raster=source_stem(encoded.raster))
    details = QgsProcessingContext.LayerDetails(name, project, "TILE_INDEX", QgsProcessingUtils.LayerHint.Vector)
    details.setPostProcessor(TileIndexPostProcessor.create(uri))
    context.addLayerToLoadOnCompletion(uri, details)


def remember_encoded_store(encoded: EncodedStore, project: Optional[QgsProject]) -> None:
    """Add the store to the user's store list and, on the main thread, set it as the store of the project's
    layers of the raster (their `quicksam/store` property), so that the Segment dock finds it."""
    settings.remember_store(encoded.store)
    app = QCoreApplication.instance()
    if project is None or app is None or QThread.currentThread() is not app.thread():
        return  # a model run in a background thread: the store list and the folder beside the raster suffice
    try:
        store = FeatureStore.open(Path(encoded.store))
    except QuickSamError:
        return
    raster = Path(encoded.raster).resolve()
    for layer in project.mapLayers().values():
        path = layer_raster_path(layer) if layer.type() == QgsMapLayer.LayerType.RasterLayer else None
        if path is not None and Path(path).resolve() == raster:
            remember_layer_store(layer, store)


class TileIndexPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles the tile index once Processing has added it to the project (on the main thread). Processing does not
    own Python post-processors, so each is kept in `_pending` until it has run (one per tile index)."""

    _pending: Dict[str, TileIndexPostProcessor] = {}

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.uri = uri

    @classmethod
    def create(cls, uri: str) -> TileIndexPostProcessor:
        processor = cls(uri)
        cls._pending[uri] = processor
        return processor

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> None:
        if isinstance(layer, QgsVectorLayer):
            style_tile_index(layer)  # the dock's Show tiles style: outlines and tile ids
            layer.triggerRepaint()
        type(self)._pending.pop(self.uri, None)
