"""Many inputs in one command (`quicksam encode INPUT... --output-dir DIR`, `quicksam segment-all INPUT...`):
the options, the list printed before anything runs, each item's events and the summary (docs/batch.md).

What each command does to one item is in cli/encode_batch.py and cli/segment_all_batch.py; which files and
which outputs, in core/batch.py.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from ..core.batch import BatchItem, NamingRule, check_name_lengths, check_suffix, find_inputs, plan_outputs
from ..core.batch_log import ItemResult, is_foreign_log, summary, summary_table
from ..core.errors import QuickSamError
from .events import EXIT_CANCELLED, EXIT_SOME_FAILED, EventWriter

#: The options that only a batch takes (dest names).
BATCH_ONLY = ("recursive", "include", "exclude", "extensions", "suffix", "disambiguate", "dry_run", "stores_dir")


def parse_extensions(text: str) -> Tuple[str, ...]:
    """Extensions from "tif,jp2" or ".tif, .JP2" (lower case, no dot)."""
    extensions = tuple(item.strip().lstrip(".").lower() for item in text.split(",") if item.strip().lstrip("."))
    if not extensions:
        raise argparse.ArgumentTypeError(f"expected extensions like tif,jp2, got '{text}'")
    return extensions


def parse_suffix(text: str) -> str:
    try:
        return check_suffix(text)
    except QuickSamError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_batch_options(parser: argparse.ArgumentParser, output: str, stores_dir: bool = False) -> None:
    """--output-dir / --next-to-inputs (either makes the command a batch), the filters and the naming options;
    `output` names what each input writes ("store", "objects file")."""
    group = parser.add_argument_group("many inputs (docs/batch.md)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--output-dir", type=Path, metavar="DIR",
                       help=f"every positional argument is an input (a file, a folder, or a quoted glob pattern such "
                            f"as 'data/*.tif'), and each input's {output} goes into DIR")
    where.add_argument("--next-to-inputs", action="store_true",
                       help=f"as --output-dir, each input's {output} next to the input")
    group.add_argument("--recursive", action="store_true", help="look into the sub-folders of folder inputs; ** in "
                                                                "patterns spans folders")
    group.add_argument("--include", action="append", default=[], metavar="PATTERN",
                       help="take only files whose name matches (repeatable; any matches; case-insensitive; a pattern "
                            "without * ? [ means 'name contains', e.g. _BF)")
    group.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="leave out files whose name matches (repeatable; as --include)")
    group.add_argument("--extensions", type=parse_extensions, metavar="tif,jp2",
                       help="take only files with these extensions (default: the raster formats GDAL reads). Files "
                            "named one by one are always taken, whatever their extension and the filters")
    group.add_argument("--suffix", type=parse_suffix, default="", metavar="TEXT",
                       help="added to every output name after _quicksam (ASCII letters, digits and - only; at most 64)")
    group.add_argument("--disambiguate", action="store_true",
                       help="inputs of the same name that would write the same output get their folders' names in "
                            "front (north_scene_quicksam); without it such a run is refused before anything is written")
    group.add_argument("--dry-run", action="store_true", help="print the inputs and their outputs, and stop")
    if stores_dir:
        group.add_argument("--stores-dir", type=Path, metavar="DIR",
                           help="where the stores of raster inputs are (default: --output-dir, or next to each "
                                "input), named as quicksam encode names them (same --suffix)")


def is_batch(args: argparse.Namespace) -> bool:
    """Whether the command runs on many inputs (--output-dir or --next-to-inputs); QuickSamError (one line) for
    a batch-only option without either."""
    if args.output_dir is not None or args.next_to_inputs:
        return True
    defaults = {"include": [], "exclude": [], "suffix": ""}
    for name in BATCH_ONLY:
        if getattr(args, name, None) not in (None, False, defaults.get(name)):
            option = "--" + name.replace("_", "-")
            raise QuickSamError(f"{option} is for many inputs: add --output-dir DIR or --next-to-inputs")
    return False


def plan_batch(args: argparse.Namespace, specs: Iterable[str], kind: str, extensions: Sequence[str],
               stores: bool = False) -> List[BatchItem]:
    """The batch's items from the command line (core/batch.py): nothing is written. QuickSamError (one line)
    for inputs that give nothing and for clashing outputs."""
    inputs = find_inputs(specs, args.recursive, args.include, args.exclude, args.extensions or extensions, stores)
    stores_dir = getattr(args, "stores_dir", None)
    rule = NamingRule(output_dir=args.output_dir.absolute() if args.output_dir else None, suffix=args.suffix,
                      disambiguate=args.disambiguate, stores_dir=stores_dir.absolute() if stores_dir else None)
    items = plan_outputs(inputs, rule, kind)
    check_name_lengths(items)
    for item in items:
        if is_foreign_log(item.log):
            raise QuickSamError(f"'{item.log}' (the log of '{item.input}') is not a QuickSAM log, and nothing you made "
                                "is touched: move it away, or choose another --suffix")
    if rule.output_dir is not None:
        check_writable_folder(rule.output_dir)
    return items


def check_writable_folder(folder: Path) -> None:
    """QuickSamError (one line) unless `folder` (or, when it is not there yet, its nearest existing parent, where
    it will be made) is a folder this process can write into; nothing is written."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == folder else f" (it would be made in '{existing}')"
        raise QuickSamError(f"--output-dir '{folder}' cannot be written{what}: choose a folder you can write to")


def command_settings(args: argparse.Namespace) -> Tuple[Tuple[str, str], ...]:
    """What an item's log lists: the command line, then the options that were set (not the parser's positional
    fields, which hold the whole run's inputs: the log's header names the item's input and output)."""
    line = "quicksam " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    options = [(key, str(value)) for key, value in sorted(vars(args).items())
               if key not in ("handler", "command", "store", "rasters") and value not in (None, False, [], ())]
    return (("command line", line), *(("option " + key, value) for key, value in options))


def new_result(index: int, items: Sequence[BatchItem]) -> ItemResult:
    item = items[index]
    return ItemResult(index=index, count=len(items), input=str(item.input), output=str(item.output), log=str(item.log))


def announce(events: EventWriter, items: Sequence[BatchItem], dry_run: bool) -> None:
    """The list, before anything runs: the `batch` event, or a line per item for people."""
    if events.as_json:
        events.emit("batch", items=[{"input": str(i.input), "output": str(i.output), "log": str(i.log)}
                                    for i in items], dry_run=dry_run)
        return
    events.info(f"{len(items)} input(s)" + (" (dry run: nothing is written)" if dry_run else "") + ":")
    for item in items:
        events.info(f"  {item.input} -> {item.output}")


def dry_run_finished(events: EventWriter, items: Sequence[BatchItem]) -> int:
    """A dry run's `finished`: nothing done, the planned items listed."""
    result = {"items": [], "done": 0, "failed": 0,
              "planned": [{"input": str(i.input), "output": str(i.output), "log": str(i.log)} for i in items]}
    events.finished(result, indent=2)
    return 0


def item_started(events: EventWriter, result: ItemResult) -> None:
    if events.as_json:
        events.emit("item_start", index=result.index, count=result.count, input=result.input, output=result.output)
    else:
        events.info(f"[{result.index + 1}/{result.count}] {result.input}")


def item_finished(events: EventWriter, result: ItemResult) -> None:
    if events.as_json:
        events.emit("item_finished", **result.row())
    elif result.error:
        events.warning(f"[{result.index + 1}/{result.count}] {result.input} failed: {result.error}")


def finish(events: EventWriter, results: Sequence[ItemResult], interrupted: bool = False) -> int:
    """The summary table (people), the `finished` event (its summary: every row, done, failed; `interrupted`
    True when Ctrl-C or SIGTERM stopped the run, then the one "interrupted" line); the exit status:
    EXIT_CANCELLED when interrupted, EXIT_SOME_FAILED when any item failed, else 0."""
    if not events.as_json:
        for line in summary_table(results):
            events.info(line)
    result = summary(results)
    if interrupted:
        events.finished({**result, "interrupted": True}, indent=2)
        events.error("interrupted: the run stopped; the summary above is what was done so far (finished tiles are "
                     "kept): run the same command to resume", EXIT_CANCELLED, kind="")
        return EXIT_CANCELLED
    events.finished(result, indent=2)
    return EXIT_SOME_FAILED if result["failed"] else 0


class ItemEvents:
    """An EventWriter whose `progress` events carry the item's index (`item`); everything else is the writer's."""

    def __init__(self, events: EventWriter, index: int) -> None:
        self._events = events
        self._index = index

    def progress(self, done: float, total: Optional[float], unit: str, **fields: Any) -> None:
        self._events.progress(done, total, unit, item=self._index, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._events, name)

