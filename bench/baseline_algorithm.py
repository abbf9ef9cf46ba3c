"""The baseline encoder loop as a Processing script, to time it inside `qgis_process.bin`
(how in-QGIS encoders run today: torch inside QGIS's own process)."""

import sys
import time
from pathlib import Path

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
)


class BaselineEncode(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"

    def name(self):
        return "baselineencode"

    def displayName(self):
        return "Baseline SAM2 encode (benchmark)"

    def createInstance(self):
        return BaselineEncode()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(self.INPUT, "Raster"))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Output folder"))
        self.addOutput(QgsProcessingOutputNumber("TILES", "Tiles"))
        self.addOutput(QgsProcessingOutputNumber("LOOP_SECONDS", "Loop seconds"))

    def processAlgorithm(self, parameters, context, feedback):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import torch
        from baseline import baseline_encode
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        torch.manual_seed(0)
        predictor = SAM2ImagePredictor(build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu"))
        started = time.perf_counter()
        written = baseline_encode(self.parameterAsFile(parameters, self.INPUT, context),
                                  Path(self.parameterAsString(parameters, self.OUTPUT, context)), predictor)
        return {"TILES": len(written) // 3, "LOOP_SECONDS": time.perf_counter() - started}
