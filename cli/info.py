"""`quicksam info` and `quicksam checkpoints`: a store's summary; list, download or register checkpoints."""

from __future__ import annotations

import argparse

from ..core.catalogue import CHECKPOINTS, MODELS
from ..core.store_url import is_object_store_url, store_location
from .events import EventWriter, add_events_option, download_progress
from .object_store import remote_info


def add_info_parsers(commands: argparse._SubParsersAction) -> None:
    """`quicksam info STORE` and `quicksam checkpoints list|download|register`."""
    info = commands.add_parser("info", help="print a JSON summary of a feature store")
    info.add_argument("store", type=store_location, help="a store folder, or the URL of a store on an object store")
    add_events_option(info)
    info.set_defaults(handler=_cmd_info)

    checkpoints = commands.add_parser("checkpoints", help="list, download or register checkpoints")
    actions = checkpoints.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="official and registered checkpoints, and which are cached")
    add_events_option(listing)
    download = actions.add_parser("download", help="download a checkpoint into the user cache")
    download.add_argument("name")
    add_events_option(download)
    register = actions.add_parser("register", help="register a custom checkpoint (e.g. a micro-sam fine-tune)")
    register.add_argument("name")
    register.add_argument("--model", required=True, choices=sorted(MODELS))
    source = register.add_mutually_exclusive_group(required=True)
    source.add_argument("--path")
    source.add_argument("--url")
    register.add_argument("--sha256", help="expected SHA-256 of a --url checkpoint")
    add_events_option(register)
    checkpoints.set_defaults(handler=_cmd_checkpoints)


def _cmd_info(args: argparse.Namespace, events: EventWriter) -> int:
    from ..core.store import FeatureStore
    from .encode_series import series_info

    if is_object_store_url(args.store):
        return remote_info(args.store, events)
    events.start(store=str(args.store))
    events.finished(series_info(FeatureStore.open(args.store)), indent=2)
    return 0


def _cmd_checkpoints(args: argparse.Namespace, events: EventWriter) -> int:
    from ..encoder import checkpoints

    events.start(**({"name": args.name} if args.action != "list" else {}))
    if args.action == "list":
        rows = []
        for name, spec in checkpoints.all_checkpoints().items():
            cached = checkpoints.cached_checkpoint(spec.model) if name in CHECKPOINTS else None
            rows.append({"name": name, "model": spec.model, "url": spec.url, "sha256": spec.sha256,
                         "official": name in CHECKPOINTS, "cached": str(cached.path) if cached else None})
        events.finished(rows, indent=2)
    elif args.action == "download":
        resolved = checkpoints.resolve_checkpoint(args.name, progress=download_progress(events, args.name))
        events.finished({"name": resolved.name, "path": str(resolved.path), "sha256": resolved.sha256})
    else:
        spec = checkpoints.register_checkpoint(args.name, args.model, path=args.path, url=args.url,
                                               sha256=args.sha256)
        events.finished({"registered": spec.name, "model": spec.model, "url": spec.url})
    return 0
