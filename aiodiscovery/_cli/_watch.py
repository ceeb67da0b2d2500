"""``aiodiscovery watch``: a service's endpoints, then every change, until a signal."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from aiodiscovery import EndpointManager, Operation, Update, WatchBatch

from ._command import Command
from ._errors import EXIT_OK
from ._output import compact_json, json_text, lease_hex, safe, say
from ._settings import ConnectSettings
from ._targets import TARGET_HELP, target_prefix

__all__ = ["WATCH"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument("--json", action="store_true", help="print one JSON object per batch")


async def _run(args: argparse.Namespace, settings: ConnectSettings) -> int:
    prefix = target_prefix(args.target)
    async with settings.client() as client:
        batches = EndpointManager(client, args.target).watch_batches()
        async with contextlib.aclosing(batches):
            first = True
            async for batch in batches:
                say(*_batch_lines(batch, prefix, first=first, as_json=args.json))
                first = False
    return EXIT_OK  # not reached: only a signal ends a watch


def _update_json(update: Update) -> dict[str, Any]:
    if update.op is Operation.DELETE:
        return {"op": "delete", "key": update.key}
    assert update.endpoint is not None
    return {
        "op": "add",
        "key": update.key,
        "addr": update.endpoint.addr,
        "metadata": update.endpoint.metadata,
        "lease": lease_hex(update.lease),
    }


def _update_line(update: Update) -> str:
    if update.op is Operation.DELETE:
        return f"DELETE {safe(update.key)}"
    assert update.endpoint is not None
    metadata = safe(compact_json(update.endpoint.metadata))
    lease = lease_hex(update.lease) or "-"
    return f"ADD    {safe(update.key)}  {safe(update.endpoint.addr)}  {metadata}  lease={lease}"


def _batch_lines(batch: WatchBatch, prefix: str, *, first: bool, as_json: bool) -> list[str]:
    if as_json:
        doc = {
            "revision": batch.revision,
            "initial": first,
            "relist": batch.relist and not first,
            "updates": [_update_json(u) for u in batch.updates],
        }
        return [json_text(doc)]
    if first:
        header = (
            f"# revision {batch.revision}: {len(batch.updates)} endpoints under {safe(prefix)}; "
            "watching for changes (Ctrl-C to stop)"
        )
    elif batch.relist:
        header = f"# revision {batch.revision}: listed again after a gap"
    else:
        header = f"# revision {batch.revision}"
    return [header, *(_update_line(u) for u in batch.updates)]


WATCH = Command(
    name="watch",
    help="print a service's changes as they happen",
    description="Print the current endpoints, then every change as it happens (one batch per "
    "etcd revision), until Ctrl-C or SIGTERM. Survives etcd restarts and compaction.",
    configure=_configure,
    run=_run,
)
