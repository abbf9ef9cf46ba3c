"""The Segment dock, its map tool and the pieces behind it (QGIS layer over interactive/)."""
