"""``python -m bench [NAME ...]``: run benchmarks and print a table per benchmark.

NAME is a suite (``core``, ``sync``, ``kiosk``, ``devices``), a core benchmark (lookup, cart,
commit, import, verify) or ``all``; none runs everything. The sync suite lives in :mod:`bench.sync`
and needs Mosquitto; the devices suite is :mod:`bench.devices`. ``--quick`` uses small sizes for a smoke run,
``--set NAME=N`` overrides one size, ``--workdir`` puts the temporary data somewhere
else (the storage under test matters for ``commit``), ``--json`` saves the results.
The exit status is 0 unless ``--check`` is given and a target was missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import BenchResult, Sizes, format_result, machine_info
from bench.core import BENCHMARKS

log = logging.getLogger("bench")

SUITES: dict[str, tuple[str, ...]] = {
    "core": tuple(BENCHMARKS), "sync": ("sync",), "kiosk": ("kiosk",), "devices": ("devices",)
}  # fmt: skip
ORDER = (*BENCHMARKS, "sync", "kiosk", "devices")


def select(names: Sequence[str]) -> list[str]:
    """What to run for suite and benchmark names, in run order, without repeats."""
    wanted: list[str] = []
    for name in names or ("all",):
        if name == "all":
            wanted += ORDER
        elif name in SUITES:
            wanted += SUITES[name]
        elif name in BENCHMARKS:
            wanted.append(name)
        else:
            known = ", ".join(["all", *SUITES, *BENCHMARKS])
            raise ValueError(f"unknown benchmark {name!r}; choose from {known}")
    return [n for n in ORDER if n in wanted]


def _suite_results(suite: str, quick: bool) -> list[BenchResult]:
    """A suite's own results (plain dicts from ``bench.<suite>.run``) as results."""
    import importlib

    started = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{suite}")
    except ImportError as exc:  # pragma: no cover - its dependencies are in the project's
        return [BenchResult(suite, f"{suite} benchmarks", "-", {"error": str(exc)}, ok=False)]
    results = []
    for raw in module.run(quick):
        fields = {k: v for k, v in raw.items() if k not in ("name", "target", "ok")}
        results.append(
            BenchResult(str(raw.get("name", suite)), f"defined in bench/{suite}.py", "see its fields", fields,
                        target=str(raw.get("target", "")), ok=bool(raw.get("ok")))
        )  # fmt: skip
    for result in results:
        result.seconds = (time.perf_counter() - started) / len(results)
    return results


def run(
    names: Sequence[str],
    sizes: Sizes,
    *,
    quick: bool = False,
    root: Path | None = None,
    on_result: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Run benchmarks in turn, each core one in its own temporary directory (deleted afterwards)."""
    results = []
    for name in select(names):
        log.info("running %s", name)
        if name in ("sync", "kiosk", "devices"):
            batch = _suite_results(name, quick)
        else:
            with tempfile.TemporaryDirectory(prefix=f"tillbox-bench-{name}-", dir=root) as tmp:
                batch = [BENCHMARKS[name](sizes, Path(tmp))]
        for result in batch:
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _show(result: BenchResult) -> None:
    print()
    print(format_result(result), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="tillbox benchmarks")
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"all (default), {', '.join(SUITES)}, or: " + ", ".join(BENCHMARKS)
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SIZE=N", dest="sizes",
        help="override a size, e.g. --set catalog_items=50000 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="directory for the temporary data (default: system temp)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sizes = (Sizes.quick() if args.quick else Sizes()).override(args.sizes)
        select(args.names)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.quiet:
        logging.basicConfig(level=logging.WARNING, format="  .. %(message)s", stream=sys.stderr)
        log.setLevel(logging.INFO)  # progress of the benchmarks, not the ledger's own messages
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    info = machine_info()
    print(f"# {command.strip()}")
    print("# " + "; ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    started = time.perf_counter()
    results = run(args.names, sizes, quick=args.quick, root=args.workdir, on_result=_show)
    failed = [r.name for r in results if not r.passed]
    end_load = machine_info()["load average"]
    print(f"\n# {len(results)} benchmark(s) in {time.perf_counter() - started:.0f} s; load average at the end: "
          f"{end_load}; " + (f"missed targets: {', '.join(failed)}" if failed else "all targets met"))  # fmt: skip
    if args.json:
        doc = {
            "command": command.strip(),
            "machine": {**info, "load average at the end": end_load},
            "results": [r.to_dict() for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
