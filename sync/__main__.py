"""``python -m sync relay|hub``: run the sync service or the reference hub in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import TillboxError


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tillbox hub`` (shared with ``python -m sync hub``)."""
    parser.add_argument("--broker", action="append", required=True, metavar="URL",
                        help="mqtt://HOST:PORT (repeat for fallbacks, tried in order)")  # fmt: skip
    parser.add_argument("--client-id", default="tillbox-hub", help="MQTT client id (default: %(default)s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sync")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay", help="publish the outbox and apply inbound updates")
    relay.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TILLBOX_DATA_DIR", "/var/lib/tillbox")))
    relay.add_argument("--config", type=Path)
    relay.add_argument("--broker", action="append", default=[], metavar="URL")
    hub = sub.add_parser("hub", help="run the reference shop hub")
    hub.add_argument("--data-dir", type=Path, required=True)
    add_hub_arguments(hub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        if args.command == "hub":
            from sync.hub import main as hub_main

            return hub_main(args)
        from appliance.config import load_config
        from sync.service import run_service

        path = args.config
        if path is None and (args.data_dir / "tillbox.toml").is_file():
            path = args.data_dir / "tillbox.toml"
        return run_service(load_config(path), args.data_dir, tuple(args.broker))
    except TillboxError as exc:
        print(f"tillbox: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
