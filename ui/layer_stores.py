"""The store of a raster layer: the QGIS side of interactive/store_lookup.py (the layer's custom property,
the file behind the layer, the user's store list in QgsSettings)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from qgis.core import QgsMapLayer, QgsProviderRegistry, QgsRasterLayer

from ..core.store import FeatureStore
from ..interactive.store_lookup import STORE_PROPERTY, StoreLookup, find_store


def layer_raster_path(layer: Optional[QgsMapLayer]) -> Optional[str]:
    """The file behind a GDAL raster layer, or None (web services, other providers, no file)."""
    if layer is None or layer.providerType() != "gdal":
        return None
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or ""
    return path if path and Path(path).is_file() else None


def find_layer_store(layer: QgsMapLayer, known_stores: Optional[List[str]] = None) -> StoreLookup:
    """The store of a raster layer: its `quicksam/store` property, next to its file, or the store list."""
    from ..ui import settings

    raster_path = layer_raster_path(layer)
    if raster_path is None:
        return StoreLookup(problem="QuickSAM segments rasters stored in files (GeoTIFF and the like); this "
                                   "layer is not one")
    value = layer.customProperty(STORE_PROPERTY)
    known = settings.known_stores() if known_stores is None else known_stores
    return find_store(raster_path, str(value) if value else None, known)


def remember_layer_store(layer: QgsMapLayer, store: FeatureStore) -> None:
    """Save the store on the layer (in the project) and in the user's store list."""
    from ..ui import settings

    layer.setCustomProperty(STORE_PROPERTY, str(store.root))
    settings.remember_store(str(store.root))


def store_parameters(layer: Optional[QgsMapLayer], parameter: str = "STORE") -> Dict[str, str]:
    """Initial parameters of a Processing dialog that decodes on a store: {parameter: the store folder} of
    `layer` when it is a raster layer whose store is known (store_lookup's order), else {}."""
    if not isinstance(layer, QgsRasterLayer):
        return {}
    lookup = find_layer_store(layer)
    return {parameter: str(lookup.store.root)} if lookup.store is not None else {}
