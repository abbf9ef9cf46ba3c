"""The QGIS-free core shared by both stages: errors, defaults, the logger, geotransforms, the tile grid,
the feature store and its typed, versioned manifest, locks, disk-space checks, the model catalogue, and
what SAM's mask decoder takes and gives. No QGIS, no torch, no GDAL bindings (docs/architecture.md).
"""
