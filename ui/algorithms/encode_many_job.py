"""What quicksam:encoderasters hands to the encoder process: `quicksam encode INPUT... --output-dir DIR |
--next-to-inputs` with its filters and naming options (docs/batch.md), built from checked parameters (QGIS layer).

The inputs go as absolute paths (never taken for options); options use the `--name=value` form, so a suffix or
a pattern starting with "-" stays a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from qgis.core import QgsMapLayer, QgsProcessingException, QgsRasterLayer

from ...core.batch import check_suffix
from ...core.errors import QuickSamError
from ..i18n import tr as _tr
from .encode_job import raster_file_path

_EXTENSION = re.compile(r"^[A-Za-z0-9]+$")


@dataclass(frozen=True)
class ManyRastersRequest:
    """A run over many rasters: the input files and folder, the filters, where the stores go (`output_dir` None:
    next to each input), the naming options, and the encode options (encode_settings.EncodeSettings.options)."""

    files: Sequence[str] = ()
    folder: str = ""
    recursive: bool = False
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    extensions: Sequence[str] = ()
    output_dir: Optional[str] = None
    suffix: str = ""
    disambiguate: bool = False
    options: Sequence[str] = field(default_factory=list)

    def args(self) -> List[str]:
        """The arguments of `quicksam.cli` (after `-m quicksam.cli`)."""
        args = ["encode", *self.files, *([self.folder] if self.folder else [])]
        args.append(f"--output-dir={self.output_dir}" if self.output_dir else "--next-to-inputs")
        if self.recursive:
            args.append("--recursive")
        args += [f"--include={pattern}" for pattern in self.include]
        args += [f"--exclude={pattern}" for pattern in self.exclude]
        if self.extensions:
            args.append("--extensions=" + ",".join(self.extensions))
        if self.suffix:
            args.append(f"--suffix={self.suffix}")
        if self.disambiguate:
            args.append("--disambiguate")
        return args + list(self.options)


@dataclass(frozen=True)
class ManyRastersJob:
    """Everything the run needs, copied from the parameters on the main thread."""

    request: ManyRastersRequest
    python: str


def input_files(layers: Sequence[QgsMapLayer]) -> List[str]:
    """The files behind `layers`, as absolute paths; QgsProcessingException (one line) for a layer that is not a
    raster file (a web layer, a layer in memory or inside an archive: save it to a file first)."""
    files = []
    for layer in layers:
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            raise QgsProcessingException(_tr("The layer '{name}' is not a valid raster layer: choose raster files "
                                             "for Input rasters.").format(name=layer.name()))
        path = raster_file_path(layer)  # one line for web, memory and container layers
        if path.startswith("/vsi"):
            raise QgsProcessingException(
                _tr("The layer '{name}' is read through GDAL's virtual file system ({path}): extract it to a plain "
                    "file, or encode it alone with Encode raster for SAM.").format(name=layer.name(), path=path))
        files.append(str(Path(path).absolute()))
    return files


def input_folder(text: str) -> str:
    """INPUT_FOLDER as an absolute path ("" when not given); QgsProcessingException when it is not a folder."""
    text = (text or "").strip()
    if not text:
        return ""
    if not Path(text).is_dir():
        raise QgsProcessingException(_tr("The input folder '{folder}' does not exist or is not a folder: choose "
                                         "an existing folder.").format(folder=text))
    return str(Path(text).absolute())


def patterns(text: str) -> List[str]:
    """Comma-separated file name patterns ("_BF, *_2024*") as a list, blanks dropped."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def extensions(text: str) -> List[str]:
    """EXTENSIONS ("tif, .jp2") as ["tif", "jp2"]; QgsProcessingException for anything but letters and digits."""
    found = [item.lstrip(".") for item in patterns(text)]
    bad = [item for item in found if not _EXTENSION.match(item)]
    if bad:
        raise QgsProcessingException(_tr("'{extension}' is not a file extension: give extensions such as tif,jp2 "
                                         "in Extensions.").format(extension=bad[0]))
    return found


def checked_suffix(text: str) -> str:
    """SUFFIX stripped; QgsProcessingException (one line) unless it holds only letters, digits and "-"."""
    suffix = (text or "").strip()
    try:
        return check_suffix(suffix)   # the CLI's rule (core/batch.py), in the dialog's words
    except QuickSamError:
        raise QgsProcessingException(_tr("The suffix '{suffix}' may hold only letters, digits and -: change "
                                         "Suffix.").format(suffix=suffix)) from None
