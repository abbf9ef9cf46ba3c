"""Offline stage: tiling, normalisation, models, checkpoints, the feature store and the encoder.

Everything here except `provider.py` and `encode_algorithm.py` imports no QGIS, and nothing imports
torch until a model is built.
"""

__version__ = "0.1.0"
