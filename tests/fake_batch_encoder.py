"""A stand-in for the encoder's `quicksam encode INPUT... --output-dir DIR | --next-to-inputs --progress-json`
(docs/batch.md), for testing quicksam:encoderasters' event handling without torch: it prints exactly the batch
events of docs/cli-events.md (`batch`, `item_start`, `progress` with `item`, `item_finished`, `finished` with the
summary) for the inputs of its command line, and writes nothing but the files named below.

Run as the encoder's Python: `fake_python(folder)` writes an executable that runs this file with the test's
interpreter, whatever arguments it gets. The environment chooses what happens:
- FAKE_BATCH_FAIL: comma-separated item indexes that fail (error "cannot read <name>: not a raster"), or "all";
- FAKE_BATCH_HOLD: a file: after the first item's first progress event the fake writes its pid there and waits
  (for a cancel);
- FAKE_BATCH_ARGS: a file the fake writes its arguments to (JSON);
- FAKE_BATCH_REFUSE: a message: the fake refuses the run as the CLI refuses clashing outputs (the `error` event, the
  one line on stderr, exit status 1) before any item.
Exit status 0 when every item is done, 4 when some failed (the CLI's EXIT_SOME_FAILED).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Dict, List

EXIT_SOME_FAILED = 4


def fake_python(folder: Path) -> Path:
    """An executable in `folder` that runs this fake with the test's Python, whatever arguments it gets."""
    path = Path(folder) / "fake-batch-python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "command": "encode", **fields}), flush=True)


def option(args: List[str], name: str) -> str:
    prefix = f"--{name}="
    return next((arg[len(prefix):] for arg in args if arg.startswith(prefix)), "")


def inputs(args: List[str]) -> List[Path]:
    """The positional inputs after `encode`: files as given, folders as their .tif files (sorted)."""
    found: List[Path] = []
    for arg in args[1:]:
        if arg.startswith("--"):
            continue
        path = Path(arg)
        found += sorted(path.glob("*.tif")) if path.is_dir() else [path]
    return found


def plan(args: List[str]) -> List[Dict[str, str]]:
    output_dir, suffix = option(args, "output-dir"), option(args, "suffix")
    items = []
    for path in inputs(args):
        folder = Path(output_dir) if output_dir else path.parent
        output = folder / (path.stem + "_quicksam" + (f"_{suffix}" if suffix else ""))
        items.append({"input": str(path), "output": str(output), "log": str(output) + ".log"})
    return items


def failing(count: int) -> set:
    text = os.environ.get("FAKE_BATCH_FAIL", "")
    return set(range(count)) if text == "all" else {int(index) for index in text.split(",") if index}


def run_item(index: int, item: Dict[str, str], count: int, fails: bool) -> Dict[str, object]:
    emit("item_start", index=index, count=count, input=item["input"], output=item["output"])
    for done in (1, 2):
        emit("progress", done=done, total=2, unit="tiles", percent=50.0 * done, tile=f"r0000c000{done}",
             status="done", item=index)
        hold = os.environ.get("FAKE_BATCH_HOLD")
        if hold and index == 0:
            Path(hold).write_text(str(os.getpid()))
            time.sleep(120)
    error = f"cannot read {Path(item['input']).name}: not a raster" if fails else None
    row = {"index": index, "count": count, **item, "status": "failed" if fails else "done",
           "tiles": None if fails else 2, "objects": None, "seconds": 0.5, "error": error}
    emit("item_finished", **row)
    return row


def main() -> int:
    args = sys.argv[1:]
    args = args[2:] if args[:1] == ["-m"] else args  # -m quicksam.cli
    record = os.environ.get("FAKE_BATCH_ARGS")
    if record:
        Path(record).write_text(json.dumps(args))
    refusal = os.environ.get("FAKE_BATCH_REFUSE")
    if refusal:
        emit("error", message=refusal, exit_status=1)
        print(f"quicksam: error: {refusal}", file=sys.stderr, flush=True)
        return 1
    items = plan(args)
    emit("batch", items=items, dry_run=False)
    fails = failing(len(items))
    rows = [run_item(index, item, len(items), index in fails) for index, item in enumerate(items)]
    done = sum(row["status"] == "done" for row in rows)
    emit("finished", summary={"items": rows, "done": done, "failed": len(rows) - done})
    return EXIT_SOME_FAILED if done < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
