"""The versions the set-up installs: those of requirements-torch.txt and requirements.txt (a test keeps
them equal), so the encoder environment is the one QuickSAM is tested with."""

from __future__ import annotations

from typing import Tuple

ONNXRUNTIME_VERSION = "1.31.1"
#: The interactive runtime: the newest ONNX Runtime up to the tested one that fits the packages QGIS's
#: Python already has (1.16 is the oldest the decoder works with).
RUNTIME_REQUIREMENT = f"onnxruntime>=1.16,<={ONNXRUNTIME_VERSION}"
#: The encoder environment, in two steps: torch first (sam2 is built against it without isolation).
TORCH_REQUIREMENTS: Tuple[str, ...] = ("torch==2.14.1", "torchvision==0.29.1", "setuptools", "wheel")
ENCODER_REQUIREMENTS: Tuple[str, ...] = ("sam2==1.1.0", "segment-anything==1.0", "rasterio==1.4.4",
                                         "shapely==2.2.0", "pyogrio==0.13.0",  # the tile index
                                         f"onnxruntime=={ONNXRUNTIME_VERSION}", "onnx", "attrs>=23.2",
                                         "dask[distributed]==2026.8.0")  # clusters: docs/scaling.md
#: The modules the encoder imports; the set-up verifies them.
ENCODER_MODULES: Tuple[str, ...] = ("torch", "torchvision", "sam2", "segment_anything", "rasterio", "shapely",
                                    "pyogrio", "onnx", "onnxruntime", "distributed")
#: Environment of the sam2 build: its CUDA extension is optional (only a post-processing step uses it).
SAM2_BUILD_ENV = {"SAM2_BUILD_CUDA": "0"}
