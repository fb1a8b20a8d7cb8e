"""``tillbox catalog import``: load items from CSV or JSON Lines, atomically.

Rows are validated one by one while they are written inside a single ledger
transaction. Any bad row rejects the whole file (the transaction is rolled back)
unless ``skip_bad`` is set, in which case bad rows are reported and left out.
The file is streamed, so memory stays flat for large catalogs.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from appliance.barcode import DEFAULT_LAYOUTS, VariableMeasureLayout, catalog_key
from appliance.errors import InputError, TillboxError
from appliance.ledger import Ledger
from appliance.money import Currency

REQUIRED = ("sku", "name", "price", "barcode", "tax_class")
OPTIONAL = ("unit", "department", "age_restricted", "active")
_BOOL = {"1": True, "true": True, "yes": True, "y": True, "0": False, "false": False, "no": False, "n": False,
         "": False}  # fmt: skip
_BATCH = 2000


@dataclass(frozen=True)
class RowError:
    """A rejected row: its line number in the file and why."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ImportReport:
    """What an import did."""

    imported: int = 0
    skipped: int = 0
    errors: list[RowError] = field(default_factory=list)
    sha256: str = ""


class ImportRejected(InputError):
    """The file had bad rows and ``skip_bad`` was not set; nothing was imported."""

    def __init__(self, report: ImportReport) -> None:
        shown = "; ".join(str(e) for e in report.errors[:5])
        more = f" (and {len(report.errors) - 5} more)" if len(report.errors) > 5 else ""
        super().__init__(
            f"catalog rejected, nothing imported: {len(report.errors)} bad row(s): {shown}{more}; "
            "fix them or use --skip-bad"
        )
        self.report = report


@dataclass(frozen=True)
class _Row:
    sku: str
    name: str
    price: int
    tax_class: str
    unit: str
    department: str
    age_restricted: bool
    active: bool
    barcodes: tuple[tuple[str, str], ...]  # (key, code as given)


def _text(value: Any, name: str, *, limit: int, required: bool = True) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise InputError(f"{name} is empty")
    if len(text) > limit:
        raise InputError(f"{name} is longer than {limit} characters")
    if not text.isprintable():
        raise InputError(f"{name} contains control characters")
    return text


def _flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key not in _BOOL:
        raise InputError(f"{name} must be yes/no, true/false or 1/0, not {value!r}")
    return _BOOL[key] if key else default


class _Validator:
    def __init__(
        self,
        currency: Currency,
        tax_classes: Collection[str],
        layouts: Sequence[VariableMeasureLayout],
        max_price: int,
    ) -> None:
        self.currency = currency
        self.tax_classes = set(tax_classes)
        self.layouts = layouts
        self.max_price = max_price

    def row(self, raw: Mapping[str, Any]) -> _Row:
        unknown = [k for k in raw if k not in REQUIRED and k not in OPTIONAL]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], REQUIRED + OPTIONAL, n=1)
            raise InputError(f"unknown field {unknown[0]!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        sku = _text(raw.get("sku"), "sku", limit=64)
        name = _text(raw.get("name"), "name", limit=200)
        price_raw = raw.get("price")
        if isinstance(price_raw, int | Decimal) and not isinstance(price_raw, bool):
            price_raw = str(price_raw)
        if not isinstance(price_raw, str) or not price_raw.strip():
            raise InputError("price is missing")
        price = self.currency.to_minor(price_raw)
        if price < 0:
            raise InputError(f"price {price_raw} is negative")
        if price > self.max_price:
            raise InputError(f"price {price_raw} is above the limit of {self.currency.plain(self.max_price)}")
        tax_class = _text(raw.get("tax_class"), "tax_class", limit=64)
        if tax_class not in self.tax_classes:
            hint = difflib.get_close_matches(tax_class, sorted(self.tax_classes), n=1)
            raise InputError(f"unknown tax_class {tax_class!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        unit = _text(raw.get("unit") or "each", "unit", limit=8)
        if unit not in ("each", "kg"):
            raise InputError(f"unit must be 'each' or 'kg', not {unit!r}")
        codes_raw = raw.get("barcode")
        codes = codes_raw if isinstance(codes_raw, list) else str(codes_raw or "").split("|")
        barcodes: list[tuple[str, str]] = []
        for code in codes:
            text = str(code).strip()
            if text:
                barcodes.append((catalog_key(text, self.layouts), text))
        if not barcodes:
            raise InputError("barcode is empty")
        return _Row(
            sku=sku,
            name=name,
            price=price,
            tax_class=tax_class,
            unit=unit,
            department=_text(raw.get("department"), "department", limit=64, required=False),
            age_restricted=_flag(raw.get("age_restricted"), "age_restricted", False),
            active=_flag(raw.get("active"), "active", True),
            barcodes=tuple(dict(barcodes).items()),
        )


def _read_csv(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | InputError]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise InputError(f"{path.name} is empty") from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"{path.name}: header lacks column(s) {', '.join(missing)}; it needs {','.join(REQUIRED)}")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield line, InputError(f"has {len(row)} fields, the header has {len(header)}")
                continue
            yield line, dict(zip(header, row, strict=True))


def _read_jsonl(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | InputError]]:
    with path.open(encoding="utf-8") as fh:
        for line, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text, parse_float=Decimal)
            except json.JSONDecodeError as exc:
                yield line, InputError(f"is not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                yield line, InputError("is not a JSON object")
                continue
            yield line, obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_catalog(
    ledger: Ledger,
    path: Path,
    *,
    currency: Currency,
    tax_classes: Collection[str],
    time: str,
    layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS,
    max_price: int = 10_000_000,
    skip_bad: bool = False,
    actor: str | None = None,
) -> ImportReport:
    """Import a CSV (``.csv``) or JSON Lines (``.jsonl``/``.ndjson``) catalog file."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise InputError(f"{path.name}: unknown catalog format {suffix!r}; use .csv or .jsonl")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    reader = _read_csv if suffix == ".csv" else _read_jsonl
    check = _Validator(currency, tax_classes, layouts, max_price)
    report = ImportReport(sha256=_sha256(path))
    seen_sku: set[str] = set()
    key_owner: dict[str, str] = {}
    batch: list[_Row] = []
    try:
        with ledger.transaction("importing catalog") as tx:
            for line, raw in reader(path):
                try:
                    if isinstance(raw, InputError):
                        raise raw
                    row = check.row(raw)
                    if row.sku in seen_sku:
                        raise InputError(f"sku {row.sku} appears twice in the file")
                    for key, code in row.barcodes:
                        owner = key_owner.get(key)
                        if owner is not None and owner != row.sku:
                            raise InputError(f"barcode {code} is also given for sku {owner}")
                except TillboxError as exc:
                    report.errors.append(RowError(line, str(exc)))
                    continue
                seen_sku.add(row.sku)
                for key, _code in row.barcodes:
                    key_owner[key] = row.sku
                batch.append(row)
                if len(batch) >= _BATCH:
                    _write(tx.conn, batch)
                    report.imported += len(batch)
                    batch.clear()
            _write(tx.conn, batch)
            report.imported += len(batch)
            report.skipped = len(report.errors)
            if report.errors and not skip_bad:
                raise ImportRejected(report)
            tx.journal(
                "catalog.imported",
                {"file": path.name, "sha256": report.sha256, "imported": report.imported,
                 "skipped": report.skipped},
                time=time,
                actor=actor,
            )  # fmt: skip
    except UnicodeDecodeError as exc:
        raise InputError(f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(f"{path.name} is not valid CSV: {exc}") from None
    except ImportRejected as exc:
        exc.report.imported = 0
        raise
    return report


def _write(conn: Any, rows: list[_Row]) -> None:
    if not rows:
        return
    conn.executemany(
        "INSERT INTO items(sku, name, price, tax_class, unit, department, age_restricted, active) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sku) DO UPDATE SET name = excluded.name, "
        "price = excluded.price, tax_class = excluded.tax_class, unit = excluded.unit, "
        "department = excluded.department, age_restricted = excluded.age_restricted, active = excluded.active",
        [(r.sku, r.name, r.price, r.tax_class, r.unit, r.department, int(r.age_restricted), int(r.active))
         for r in rows],
    )  # fmt: skip
    conn.executemany("DELETE FROM barcodes WHERE sku = ?", [(r.sku,) for r in rows])
    conn.executemany(
        "INSERT INTO barcodes(key, sku, code) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET sku = excluded.sku, code = excluded.code",
        [(key, r.sku, code) for r in rows for key, code in r.barcodes],
    )


CatalogRow = _Row


def validate_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    currency: Currency,
    tax_classes: Collection[str],
    layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS,
    max_price: int = 10_000_000,
) -> list[CatalogRow]:
    """Validate catalog rows with the import rules (used by MQTT catalog sync).

    All or nothing: raises :class:`InputError` naming the first bad row (0-based).
    """
    check = _Validator(currency, tax_classes, layouts, max_price)
    out: list[CatalogRow] = []
    seen: set[str] = set()
    key_owner: dict[str, str] = {}
    for i, raw in enumerate(rows):
        try:
            row = check.row(raw)
            if row.sku in seen:
                raise InputError(f"sku {row.sku} appears twice")
            for key, code in row.barcodes:
                owner = key_owner.setdefault(key, row.sku)
                if owner != row.sku:
                    raise InputError(f"barcode {code} is also given for sku {owner}")
        except TillboxError as exc:
            raise InputError(f"row {i}: {exc}") from None
        seen.add(row.sku)
        out.append(row)
    return out


def write_rows(conn: Any, rows: Sequence[CatalogRow]) -> None:
    """Upsert validated rows and their barcodes, inside the caller's transaction."""
    _write(conn, list(rows))
