"""Encoding stage: reading rasters, normalisation, models, checkpoints, the tile pipeline, the tile index.

Nothing here imports QGIS (the Processing algorithm that runs an encode is ui/algorithms/encode_algorithm.py)
or the decoding stage, and nothing imports torch until a model is built.
"""

__version__ = "0.1.0"
