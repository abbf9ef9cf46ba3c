"""Processing algorithm quicksam:encoderasters: encode many rasters, each into its own feature store.

One implementation with the CLI: the parameters are checked and copied on the main thread (`prepareAlgorithm`),
then `processAlgorithm` runs `python -m quicksam.cli encode INPUT... --output-dir DIR | --next-to-inputs
--progress-json` in the encoder's Python (docs/batch.md) and maps its events to the feedback (batch_events.py).
A raster that fails does not stop the others: it is an error line in the log and counts in FAILED; only a run in
which every raster failed is an algorithm error.
"""

from __future__ import annotations

import shlex
from typing import Any, Dict, List, Optional, Tuple

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterString,
)

from ...core.errors import Cancelled, EncoderEnvironmentError, QuickSamError
from ...encoder.subprocess_runner import DEFAULT_MODULE, encoder_command, run_encoder_process
from ..i18n import tr as _tr
from ..settings import encoder_python
from .algorithm_base import QuickSamAlgorithm, started_by_command_line
from .batch_events import DONE, BatchEventReporter, summary_file, summary_rows, write_summary_csv
from .encode_many_job import (
    ManyRastersJob,
    ManyRastersRequest,
    checked_suffix,
    extensions,
    input_files,
    input_folder,
    patterns,
)
from .encode_outputs import EncodedStore, remember_encoded_store, wants_default_store
from .encode_settings import (
    add_cluster_parameters,
    add_level_parameters,
    add_model_parameters,
    add_tile_parameters,
    encode_settings,
)
from .encoder_events import in_dialog_words, record_environment_failure, words_for


class EncodeRastersAlgorithm(QuickSamAlgorithm):
    """Encode many rasters (layers, a folder) with a SAM image encoder, each into its own feature store."""

    GROUP_ID = "encoding"
    ICON = "encode_many.svg"

    INPUTS = "INPUTS"
    INPUT_FOLDER = "INPUT_FOLDER"
    RECURSIVE = "RECURSIVE"
    INCLUDE = "INCLUDE"
    EXCLUDE = "EXCLUDE"
    EXTENSIONS = "EXTENSIONS"
    SUFFIX = "SUFFIX"
    DISAMBIGUATE = "DISAMBIGUATE"
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    STORES = "STORES"
    DONE = "DONE"
    FAILED = "FAILED"
    SUMMARY = "SUMMARY"

    def __init__(self) -> None:
        super().__init__()
        self._job: Optional[ManyRastersJob] = None
        self._done: List[EncodedStore] = []

    def name(self) -> str:
        return "encoderasters"

    def displayName(self) -> str:
        return _tr("Encode many rasters")

    def shortHelpString(self) -> str:
        return _tr(
            "<p>Encodes every raster of a list of layers and of a folder, each into its own <b>feature store</b>, "
            "in the encoder's Python as <i>Encode raster for SAM</i> does. A store is named after its raster: "
            "<i>name</i>_quicksam, then _<i>suffix</i> when a suffix is given; a log file <i>store</i>.log lies "
            "beside each store. Two rasters that would write the same store are refused before anything is "
            "written (or told apart by their folders' names with <b>Disambiguate</b>). An existing store of the "
            "same raster and settings is resumed. A raster that fails does not stop the others: it is reported "
            "in the log and counted in FAILED.</p>"
            "<p><b>Input rasters</b>: raster layers that are files. <b>Input folder</b>: every raster file in it "
            "(and its sub-folders with <b>Recursive</b>), taken when its name matches any <b>Include</b> pattern "
            "and no <b>Exclude</b> pattern (comma-separated; a pattern without * ? [ means \"name contains\", "
            "e.g. _BF) and has one of the <b>Extensions</b> (default: the formats GDAL reads). <b>Output "
            "folder</b>: where the stores go; empty: next to each raster. <b>Suffix</b>: letters, digits and - "
            "only.</p>"
            "<p>The model, tile and level settings are those of <i>Encode raster for SAM</i>, for every raster. "
            "Advanced: <b>worker processes</b> (a Dask cluster of that many processes on this machine; with more "
            "rasters than workers each worker encodes whole rasters) and <b>Dask scheduler</b> (tcp://HOST:8786 "
            "of an existing cluster whose workers see the rasters and the stores at the same paths).</p>"
            "<p>Outputs: the output folder, the stores written (STORES, separated by ;), how many were done and "
            "failed, and SUMMARY: a CSV table (input, output, log, status, tiles, objects, seconds, error) "
            "written as quicksam_summary[_<i>suffix</i>].csv in the output folder (outputs next to their inputs: "
            "in the input folder, else beside the first store). Cancelling keeps the stores and tiles finished; "
            "run again with the same parameters to resume.</p>")

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:
        self._add_input_parameters()
        add_model_parameters(self)
        add_level_parameters(self)
        add_tile_parameters(self)
        add_cluster_parameters(self)
        self._add_naming_parameters()
        self.addOutput(QgsProcessingOutputString(self.STORES, _tr("Feature stores written (;-separated)")))
        self.addOutput(QgsProcessingOutputNumber(self.DONE, _tr("Rasters encoded")))
        self.addOutput(QgsProcessingOutputNumber(self.FAILED, _tr("Rasters that failed")))
        self.addOutput(QgsProcessingOutputFile(self.SUMMARY, _tr("Summary table (CSV)")))

    def _add_input_parameters(self) -> None:
        self._add(QgsProcessingParameterMultipleLayers(
            self.INPUTS, _tr("Input rasters"), QgsProcessing.SourceType.TypeRaster, optional=True),
            _tr("Raster layers to encode, each a file (a web or in-memory layer: save it to a file first). Taken "
                "whatever the filters below."))
        self._add(QgsProcessingParameterFile(
            self.INPUT_FOLDER, _tr("Input folder"), QgsProcessingParameterFile.Behavior.Folder, optional=True),
            _tr("A folder whose raster files are encoded (filtered by the patterns and extensions below)."))
        self._add(QgsProcessingParameterBoolean(self.RECURSIVE, _tr("Include sub-folders"), defaultValue=False),
                  _tr("Also take the raster files of the input folder's sub-folders."))
        self._add(QgsProcessingParameterString(
            self.INCLUDE, _tr("Include file names matching (comma-separated)"), defaultValue="", optional=True),
            _tr("Take only files whose name matches one of these patterns (case-insensitive); a pattern without "
                "* ? [ means 'name contains', e.g. _BF. Empty: every file."))
        self._add(QgsProcessingParameterString(
            self.EXCLUDE, _tr("Exclude file names matching (comma-separated)"), defaultValue="", optional=True),
            _tr("Leave out files whose name matches one of these patterns (as Include)."))
        self._add(QgsProcessingParameterString(
            self.EXTENSIONS, _tr("Extensions (e.g. tif,jp2; empty = the formats GDAL reads)"), defaultValue="",
            optional=True),
            _tr("Take only files of the folder with these extensions. Empty: every raster format GDAL reads."))

    def _add_naming_parameters(self) -> None:
        self._add(QgsProcessingParameterString(
            self.SUFFIX, _tr("Suffix of the store names (letters, digits, -)"), defaultValue="", optional=True),
            _tr("Added after _quicksam to every store's name, e.g. v2 gives scene_quicksam_v2. Letters, digits and "
                "- only."))
        self._add(QgsProcessingParameterBoolean(
            self.DISAMBIGUATE, _tr("Disambiguate rasters of the same name by their folders"), defaultValue=False),
            _tr("Rasters of the same name that would write the same store get their folders' names in front "
                "(north_scene_quicksam). Unticked, such a run is refused before anything is written."))
        self._add(QgsProcessingParameterFolderDestination(
            self.OUTPUT_FOLDER, _tr("Output folder (empty = next to each raster)"), optional=True),
            _tr("Folder of the feature stores, their logs and the summary table. Empty (or the temporary folder): "
                "each store next to its raster."))

    def checkParameterValues(self, parameters: Dict[str, Any],
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        """Refuse bad input before anything runs, in one line saying what to do (shown as is by the dialog,
        processing.run and qgis_process)."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            self.request(parameters, context)
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""

    def prepareAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> bool:
        """Copy every parameter here, on the main thread, before the background run."""
        self._job = ManyRastersJob(request=self.request(parameters, context), python=encoder_python())
        self._done = []
        return True

    def request(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> ManyRastersRequest:
        """The checked parameters as a ManyRastersRequest; QgsProcessingException (one line) on bad input."""
        files = input_files(self.parameterAsLayerList(parameters, self.INPUTS, context))
        folder = input_folder(self.parameterAsFile(parameters, self.INPUT_FOLDER, context))
        if not files and not folder:
            raise QgsProcessingException(_tr("Nothing to encode: choose raster layers in Input rasters or a folder "
                                             "in Input folder."))
        output = parameters.get(self.OUTPUT_FOLDER)
        output_dir = None if wants_default_store(output) else self.parameterAsString(
            parameters, self.OUTPUT_FOLDER, context)
        return ManyRastersRequest(
            files=files, folder=folder, recursive=self.parameterAsBoolean(parameters, self.RECURSIVE, context),
            include=patterns(self.parameterAsString(parameters, self.INCLUDE, context)),
            exclude=patterns(self.parameterAsString(parameters, self.EXCLUDE, context)),
            extensions=extensions(self.parameterAsString(parameters, self.EXTENSIONS, context)),
            output_dir=output_dir, suffix=checked_suffix(self.parameterAsString(parameters, self.SUFFIX, context)),
            disambiguate=self.parameterAsBoolean(parameters, self.DISAMBIGUATE, context),
            options=encode_settings(self, parameters, context).options())

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        job = self._job
        if job is None:  # prepareAlgorithm always runs first; this guards direct misuse
            raise QgsProcessingException(_tr("The algorithm was not prepared."))
        args = job.request.args()
        feedback.pushCommandInfo(shlex.join(encoder_command(args, job.python, DEFAULT_MODULE)))
        reporter = BatchEventReporter(feedback)
        self._run(args, job.python, reporter, feedback, context)
        if reporter.summary is None:
            raise QgsProcessingException(
                _tr("The encoder process ended without reporting its result; see the log above."))
        return self._results(job.request, reporter.summary, feedback)

    def _run(self, args: List[str], python: str, reporter: BatchEventReporter, feedback: QgsProcessingFeedback,
             context: QgsProcessingContext) -> None:
        """Run the encoder process; QgsProcessingException when it is cancelled or fails as a whole (some rasters
        failing is not: the process then exits with a status of its own after its summary)."""
        try:
            run_encoder_process(args, python, reporter, feedback.isCanceled)
        except Cancelled as exc:
            raise QgsProcessingException(
                _tr("Encoding cancelled: the stores and tiles finished so far are kept; run the algorithm again "
                    "with the same parameters to resume.")) from exc
        except EncoderEnvironmentError as exc:
            record_environment_failure()
            raise QgsProcessingException(in_dialog_words(str(exc))) from exc
        except QuickSamError as exc:
            if reporter.summary is None:
                raise QgsProcessingException(words_for(str(exc), started_by_command_line(context))) from exc

    def _results(self, request: ManyRastersRequest, summary: Dict[str, Any],
                 feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        """The outputs of a finished run, its summary CSV written; QgsProcessingException when every raster
        failed."""
        rows = summary_rows(summary)
        done = [row for row in rows if row.get("status") == DONE]
        table = self._write_summary(request, rows, feedback)
        if rows and not done:
            raise QgsProcessingException(
                _tr("None of the {count} rasters was encoded; the first error: {error} (each raster's log and the "
                    "summary {summary} say more).").format(count=len(rows), error=rows[0].get("error"),
                                                           summary=table))
        self._done = [EncodedStore(raster=str(row.get("input")), store=str(row.get("output")), tile_index="")
                      for row in done]
        feedback.pushInfo(_tr("{done} of {count} rasters encoded, {failed} failed; summary: {summary}").format(
            done=len(done), count=len(rows), failed=len(rows) - len(done), summary=table))
        return {self.OUTPUT_FOLDER: request.output_dir or "", self.STORES: ";".join(s.store for s in self._done),
                self.DONE: len(done), self.FAILED: len(rows) - len(done), self.SUMMARY: table}

    @staticmethod
    def _write_summary(request: ManyRastersRequest, rows: List[Dict[str, Any]],
                       feedback: QgsProcessingFeedback) -> str:
        """The summary CSV's path ("" with a warning when it cannot be written, "" when there is no row)."""
        if not rows:
            return ""
        path = summary_file(request.output_dir, request.folder, rows, request.suffix)
        try:
            return str(write_summary_csv(path, rows))
        except OSError as exc:
            feedback.pushWarning(_tr("The summary table could not be written to {path}: {error}").format(
                path=path, error=exc.strerror or exc))
            return ""

    def postProcessAlgorithm(self, context: QgsProcessingContext,
                             feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        """Remember the stores written (the store list; the project's layers of their rasters, main thread)."""
        for encoded in self._done:
            remember_encoded_store(encoded, context.project())
        return {}
