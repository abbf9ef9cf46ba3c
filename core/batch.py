"""Many inputs in one run: which files a batch takes, and what each one writes (no QGIS, no GDAL).

`find_inputs` turns the command line's INPUT... (files, folders, glob patterns) into a sorted list of files;
`plan_outputs` gives each its output (a feature store for `encode`, a GeoPackage for `segment-all`) and log
file by a `NamingRule`, and refuses, before anything is written, two inputs that would write the same output.
The raster extensions are the caller's (encoder/raster_formats.py asks GDAL through rasterio): this module
knows no raster format. docs/batch.md describes the rules for users.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from .errors import QuickSamError
from .store import MANIFEST

#: Every store a batch names ends with this, before the user's suffix.
QUICKSAM_SUFFIX = "_quicksam"
#: segment-all's output of store S is S + this.
OBJECTS_SUFFIX = "_objects.gpkg"
#: What a batch does to each input: encode it into a store, or segment everything on its store.
ENCODE, SEGMENT_ALL = "encode", "segment-all"
#: The longest --suffix, and the longest output or log name in bytes (file systems stop at 255).
MAX_SUFFIX, MAX_NAME = 64, 250
_SAFE_SUFFIX = re.compile(r"^[A-Za-z0-9-]+$")
_WILDCARDS = re.compile(r"[*?\[]")


def is_store_folder(path: Path) -> bool:
    """Whether `path` is a feature store folder (it has a manifest.json)."""
    return path.is_dir() and (path / MANIFEST).is_file()


def name_pattern(pattern: str) -> str:
    """An --include/--exclude pattern as matched against file names, lower case: a pattern with no wildcard
    (`*`, `?`, `[`) means "name contains it" (`_BF` = `*_bf*`)."""
    pattern = pattern.lower()
    return pattern if _WILDCARDS.search(pattern) else f"*{pattern}*"


def _name_matches(name: str, patterns: Sequence[str]) -> bool:
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, name_pattern(pattern)) for pattern in patterns)


def _has_extension(name: str, extensions: Sequence[str]) -> bool:
    lower = name.lower()
    return any(lower.endswith("." + ext.lower().lstrip(".")) for ext in extensions)


@dataclass(frozen=True)
class InputFilter:
    """Which found files a batch takes, by their NAME: any `include` pattern matches (none given: all), no
    `exclude` pattern matches, and the extension is one of `extensions` (case-insensitive; empty: any)."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    extensions: Sequence[str] = ()

    def accepts(self, name: str, by_extension: bool = True) -> bool:
        """Whether a file (or, `by_extension` False, a store folder) of this name is taken."""
        if self.include and not _name_matches(name, self.include):
            return False
        if self.exclude and _name_matches(name, self.exclude):
            return False
        return not (by_extension and self.extensions) or _has_extension(name, self.extensions)

    def describe(self) -> str:
        """The filters in words, for a message about a folder or pattern that gave nothing."""
        shown = ",".join(self.extensions[:6]) + (f",... ({len(self.extensions)} in all)"
                                                  if len(self.extensions) > 6 else "")
        parts = [f"extensions {shown}" if self.extensions else ""]
        parts += [f"--include {' '.join(self.include)}" if self.include else "",
                  f"--exclude {' '.join(self.exclude)}" if self.exclude else ""]
        return "; ".join(part for part in parts if part) or "no filter"


def _scan_folder(folder: Path, recursive: bool, keep: InputFilter, stores: bool) -> List[Path]:
    """The files of `folder` that `keep` accepts (sub-folders only when `recursive`; hidden ones, named `.*`,
    never); a store folder inside is an input when `stores`, and is never scanned."""
    found: List[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):   # hidden: .git, macOS's ._scene.tif resource forks
            continue
        if entry.is_dir():
            if is_store_folder(entry):
                if stores and keep.accepts(entry.name, by_extension=False):
                    found.append(entry)
            elif recursive:
                found.extend(_scan_folder(entry, recursive, keep, stores))
        elif entry.is_file() and keep.accepts(entry.name):
            found.append(entry)
    return found


def _from_pattern(pattern: str, recursive: bool, keep: InputFilter, stores: bool) -> List[Path]:
    """The files (and, when `stores`, store folders) a glob pattern matches that `keep` accepts."""
    found: List[Path] = []
    for match in sorted(glob.glob(pattern, recursive=recursive)):
        path = Path(match)
        if is_store_folder(path):
            if stores and keep.accepts(path.name, by_extension=False):
                found.append(path)
        elif path.is_file() and keep.accepts(path.name):
            found.append(path)
    return found


def _from_spec(spec: str, recursive: bool, keep: InputFilter, stores: bool) -> List[Path]:
    """The inputs of one INPUT: a file as named, a store folder, a folder's files or a pattern's matches.
    QuickSamError (one line) when it gives none."""
    path = Path(spec)
    if path.is_file() or is_store_folder(path):
        return [path]   # named by the user: taken whatever its extension
    if path.is_dir():
        found = _scan_folder(path, recursive, keep, stores)
        if not found:
            where, advice = ((" or its sub-folders", "change") if recursive
                             else ("", "add --recursive for its sub-folders, or change"))
            raise QuickSamError(f"no file in folder '{spec}'{where} passes the filters ({keep.describe()}): {advice} "
                                "--include/--exclude/--extensions")
        return found
    if _WILDCARDS.search(spec):
        found = _from_pattern(spec, recursive, keep, stores)
        if not found:
            raise QuickSamError(f"the pattern '{spec}' matches no file that passes the filters ({keep.describe()}); "
                                "check it (quote it in the shell; ** needs --recursive)")
        return found
    raise QuickSamError(f"'{spec}' does not exist: give existing files, folders or glob patterns such as "
                        "'data/*.tif'")


def find_inputs(specs: Iterable[str], recursive: bool = False, include: Sequence[str] = (),
                exclude: Sequence[str] = (), extensions: Sequence[str] = (), stores: bool = False) -> List[Path]:
    """The input files of a batch, absolute, sorted, each once (by resolved path).

    Each spec is a file (taken as named, whatever its extension or the filters), a folder (its files; its
    sub-folders only when `recursive`; hidden ones, `.*`, left out), or a glob pattern (`*`, `?`, `[...]`; `**`
    spans folders when `recursive`). Files found in folders and by patterns must pass `include` (any matches;
    default all), `exclude` and `extensions` (file NAMES, case-insensitive; a pattern without a wildcard means
    "name contains"). A feature store folder (it has manifest.json) is one input, never scanned; found inside a
    folder or by a pattern it is taken only when `stores` (segment-all). QuickSamError (one line, what to do)
    for a spec that does not exist or gives nothing."""
    keep = InputFilter(tuple(include), tuple(exclude), tuple(extensions))
    seen: Dict[str, Path] = {}
    for spec in specs:
        for path in _from_spec(str(spec), recursive, keep, stores):
            seen.setdefault(str(path.resolve()), Path(os.path.abspath(path)))
    return sorted(seen.values(), key=str)


def check_suffix(suffix: str) -> str:
    """The user's --suffix, QuickSamError (one line) unless it is empty or letters, digits and '-' only."""
    if suffix and not _SAFE_SUFFIX.match(suffix):
        raise QuickSamError(f"--suffix '{suffix}' may hold only ASCII letters (a-z, A-Z), digits and '-' (it becomes "
                            "part of file names on every system); e.g. --suffix v2")
    if len(suffix) > MAX_SUFFIX:
        raise QuickSamError(f"--suffix is {len(suffix)} characters long: give at most {MAX_SUFFIX} (it is part of "
                            "every output's file name); e.g. --suffix v2")
    return suffix


def check_name_lengths(items: Sequence[BatchItem]) -> None:
    """QuickSamError (one line) when an item's output or log name is longer than MAX_NAME bytes (most file
    systems refuse names over 255 bytes), naming the input: checked before anything is written."""
    for item in items:
        for path in (item.output, item.log):
            if len(os.fsencode(path.name)) > MAX_NAME:
                raise QuickSamError(f"the output name '{path.name[:40]}...' of '{item.input}' is longer than "
                                    f"{MAX_NAME} bytes, which file systems refuse: use a shorter --suffix or rename "
                                    "the input")


@dataclass(frozen=True)
class NamingRule:
    """Where a batch writes: `output_dir` (None = next to each input), the user's `suffix` (after the fixed
    `_quicksam`), `disambiguate` (inputs of the same name get their parent folders' names in front), and
    for segment-all `stores_dir`, where a raster's store is looked for (None = the output folder, or next
    to each input)."""

    output_dir: Optional[Path] = None
    suffix: str = ""
    disambiguate: bool = False
    stores_dir: Optional[Path] = None

    def __post_init__(self) -> None:
        check_suffix(self.suffix)

    def store_name(self, stem: str) -> str:
        """The store folder name of a raster of stem `stem`: `<stem>_quicksam[_<suffix>]`."""
        return stem + QUICKSAM_SUFFIX + (f"_{self.suffix}" if self.suffix else "")


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch: what it reads (`input`), writes (`output`), logs to (`log`, beside the output) and,
    for segment-all, the store it segments (`store`; for encode the output)."""

    input: Path
    output: Path
    log: Path
    store: Path


def _joined(prefix: Sequence[str], name: str) -> str:
    return "_".join([*prefix, name])


def _parents(path: Path, depth: int) -> List[str]:
    """The names of the `depth` folders above `path`, outermost first (fewer if there are not so many)."""
    names = [part for part in path.parent.parts if part not in ("/", "\\") and not part.endswith(":\\")]
    return names[len(names) - depth:] if depth else []


def _same_file_key(path: Path) -> str:
    """`path` compared as the file systems of Windows and macOS compare names: case-insensitively."""
    return os.path.normcase(str(path)).casefold()


def _clashes(paths: Sequence[Path]) -> List[List[int]]:
    """Groups (indices) of the same path among `paths`."""
    groups: Dict[str, List[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        groups[_same_file_key(path)].append(index)
    return [group for group in groups.values() if len(group) > 1]


def _unique_paths(inputs: Sequence[Path], path_of: Callable[[Path, List[str]], Path],
                  disambiguate: bool) -> List[Path]:
    """`path_of(input, prefix)` of each input with no prefix, or (`disambiguate`) with as many parent folder
    names as makes every path different. QuickSamError (one line) for paths that stay the same."""
    depths = [0] * len(inputs)
    while True:
        paths = [path_of(path, _parents(path, depth)) for path, depth in zip(inputs, depths)]
        clashes = _clashes(paths)
        if not clashes:
            return paths
        _refuse_one_folder_clash(inputs, paths, clashes)
        if not disambiguate:
            raise QuickSamError(_clash_message(inputs, paths, clashes, "add --disambiguate to put their folder names "
                                                                       "in front, or write next to each input with "
                                                                       "--next-to-inputs"))
        grown = False
        for index in (index for group in clashes for index in group):
            if depths[index] < len(_parents(inputs[index], depths[index] + 1)):
                depths[index] += 1
                grown = True
        if not grown:
            raise QuickSamError(_clash_message(inputs, paths, clashes, "rename one of them or run them separately"))


def _refuse_one_folder_clash(inputs: Sequence[Path], paths: Sequence[Path], clashes: List[List[int]]) -> None:
    """QuickSamError (one line) when inputs of one folder would write the same path (`a.tif`, `a.png`,
    `A.TIFF`): neither --disambiguate (their folder names are the same) nor --next-to-inputs tells them apart."""
    for group in clashes:
        by_folder: Dict[str, List[int]] = defaultdict(list)
        for index in group:
            by_folder[_same_file_key(inputs[index].parent)].append(index)
        same = next((members for members in by_folder.values() if len(members) > 1), None)
        if same is not None:
            raise QuickSamError(_clash_message(
                inputs, paths, [same], "they are in one folder, so neither --disambiguate nor --next-to-inputs "
                "tells them apart: keep one with --include, --exclude or --extensions, rename one, or name them in "
                "separate runs with different --suffix"))


def _clash_message(inputs: Sequence[Path], paths: Sequence[Path], clashes: List[List[int]], advice: str) -> str:
    group = clashes[0]
    names = ", ".join(f"'{inputs[i]}'" for i in group)
    more = f" (and {len(clashes) - 1} more clashes)" if len(clashes) > 1 else ""
    return f"{names} would all write '{paths[group[0]]}'{more}; nothing was written: {advice}"


def _log_of(output: Path) -> Path:
    """The log file of an output, beside it: the output's name without extension + .log."""
    name = output.name[:-len(".gpkg")] if output.name.lower().endswith(".gpkg") else output.name
    return output.parent / (name + ".log")


def _encode_plan(inputs: Sequence[Path], rule: NamingRule, folder: Optional[Path]) -> List[Path]:
    """The store of each raster in `folder` (None: next to it)."""
    return _unique_paths(inputs, lambda path, prefix: Path(folder or path.parent) / rule.store_name(
        _joined(prefix, path.stem)), rule.disambiguate)


def _segment_all_plan(inputs: Sequence[Path], rule: NamingRule) -> List[BatchItem]:
    """segment-all's items: each raster's store named as `encode` names it (in `rule.stores_dir`, else the output
    folder, else next to it; disambiguated among the rasters as encode does), each output named after its store."""
    inputs = _without_rasters_of_given_stores(inputs, rule)
    rasters = [path for path in inputs if not is_store_folder(path)]
    raster_stores = dict(zip(rasters, _encode_plan(rasters, rule, rule.stores_dir or rule.output_dir)))
    stores = [raster_stores.get(path, path) for path in inputs]
    by_input = dict(zip(inputs, stores))
    outputs = _unique_paths(inputs, lambda path, prefix: Path(rule.output_dir or path.parent) / (
        _joined(prefix, by_input[path].name) + OBJECTS_SUFFIX), rule.disambiguate)
    return [BatchItem(path, output, _log_of(output), store) for path, output, store in zip(inputs, outputs, stores)]


def plan_outputs(inputs: Sequence[Path], rule: NamingRule, kind: str = ENCODE) -> List[BatchItem]:
    """Each input's output and log by `rule` (docs/batch.md), in the order of `inputs`; writes nothing.

    encode: the store `<dir>/<stem>_quicksam[_<suffix>]`; segment-all: `<dir>/<store name>_objects.gpkg`, the
    store of a raster found by the encode rule (a raster whose store is an input too is left out). The log is
    the output's name without extension + `.log`, beside it. QuickSamError (one line) when two inputs would
    write the same output (compared case-insensitively), naming them and --disambiguate; with
    `rule.disambiguate` the clashing names get their parent folders' names in front (`north_scene_quicksam`),
    one more folder at a time until every output is different (QuickSamError if they run out)."""
    if kind == SEGMENT_ALL:
        return _segment_all_plan(inputs, rule)
    stores = _encode_plan(inputs, rule, rule.output_dir)
    return [BatchItem(path, store, _log_of(store), store) for path, store in zip(inputs, stores)]


def _without_rasters_of_given_stores(inputs: Sequence[Path], rule: NamingRule) -> List[Path]:
    """segment-all's inputs less the rasters whose store is an input too (a folder holding both a raster and
    the store made next to it gives that store once)."""
    stores = {_same_file_key(path) for path in inputs if is_store_folder(path)}
    rasters = [path for path in inputs if not is_store_folder(path)]
    folder = rule.stores_dir or rule.output_dir
    named = [Path(folder or path.parent) / rule.store_name(path.stem) for path in rasters]
    dropped = {raster for raster, store in zip(rasters, named) if _same_file_key(store) in stores}
    return [path for path in inputs if path not in dropped]
