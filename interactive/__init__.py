"""Decoding stage, QGIS-free: the ONNX decoder on cached features, the segment engine, masks to polygons,
segment everything and its merge across tiles, vector outputs, and finding a raster's store. Uses GDAL's
own bindings (`osgeo`), never QGIS; the dock and map tool that drive it are in ui/dock/.
"""
