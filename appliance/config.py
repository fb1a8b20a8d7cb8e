# ruff: noqa: RUF009  (schema helpers return dataclasses.field(), not shared default objects)
"""Appliance configuration: one TOML file, a declarative schema, strict validation.

Each ``[section]`` of the file maps to a frozen dataclass below; each key is a
dataclass field whose metadata (a :class:`Spec`) holds its type, default,
bounds or choices and a one-line doc. The parser and the generated reference
(``docs/config-reference.md``) both walk that schema, so adding a key is adding
one field. Defaults are written as raw TOML values and go through the same
validation as the file.

To extend: add a field made with :func:`text`, :func:`integer`, :func:`boolean`,
:func:`decimal`, :func:`money`, :func:`choice` or :func:`text_list` to a section;
a new section is a :class:`Table` dataclass added to :class:`Config` with
:func:`section` (subsections such as ``[devices.printer]`` likewise). Rules that
involve several keys go in the table's ``_check`` override. Then regenerate the
reference.

Numbers are parsed as :class:`~decimal.Decimal` (never float). Money keys take
major units ("110.00") and are stored as ``int`` minor units of
``[currency].code``. Unknown keys and sections are errors, with a hint.

Regenerate the reference with ``python -m appliance.config --reference > docs/config-reference.md``;
check a file with ``python -m appliance.config --check tillbox.toml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import logging
import os
import re
import sys
import tomllib
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, get_args
from urllib.parse import urlsplit

from appliance.errors import ConfigError, InputError
from appliance.money import Currency

if TYPE_CHECKING:
    from appliance.barcode import VariableMeasureLayout
    from appliance.tax import TaxPolicy

logger = logging.getLogger(__name__)

#: Environment variable that forces simulated devices when set to "sim".
ENV_DEVICES: Final = "TILLBOX_DEVICES"

Kind = Literal["str", "int", "bool", "decimal", "money", "choice", "list", "table", "map", "array"]
RoundingMode = Literal["half_up", "half_even"]
RefundTarget = Literal["original", "cash", "store_credit"]
TaxRounding = Literal["line", "invoice"]
ExemptionMode = Literal["below", "excess"]
LayoutKind = Literal["price", "weight"]
SyncMode = Literal["FULL", "EXTRA"]
DeviceMode = Literal["sim", "real"]

_SLUG = r"[a-z0-9][a-z0-9-]{0,31}"
_SLUG_TEXT = "lowercase letters, digits and '-', starting with a letter or digit, at most 32 characters"
_CODE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}"
_CODE_TEXT = "letters, digits, '_' and '-', at most 32 characters"
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


class InvalidConfigError(ConfigError):
    """The configuration has one or more invalid values; ``problems`` lists each one."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            text = f"{source}: {self.problems[0]}"
        else:
            text = f"{source}: {len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(text)


# --------------------------------------------------------------------------- schema machinery


class _Required:
    """Marker for keys without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclass(frozen=True)
class Spec:
    """Schema of one key: its kind, raw TOML default, constraints and doc line.

    ``kind`` is a scalar (``str int bool decimal money choice``), ``list`` (of
    strings) or ``table map array`` (a nested table, tables keyed by name, an
    array of tables); the latter three use ``table``.
    """

    kind: Kind
    doc: str
    default: Any = REQUIRED
    lo: Decimal | int | None = None
    hi: Decimal | int | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    check: Callable[[str], str | None] | None = None
    nonempty: bool = False
    unique: bool = False
    allowed: str | None = None
    default_doc: str | None = None
    table: type[Table] | None = None
    key_name: str = "name"
    toml: str | None = None


def _field(spec: Spec) -> Any:
    return dataclasses.field(metadata={"spec": spec})


def text(doc: str, default: Any = REQUIRED, **kw: Any) -> Any:
    """A string key (``pattern``, ``check``, ``nonempty`` constrain it)."""
    return _field(Spec("str", doc, default, **kw))


def integer(doc: str, default: Any = REQUIRED, **kw: Any) -> Any:
    """An integer key (``lo``/``hi`` bound it, inclusive)."""
    return _field(Spec("int", doc, default, **kw))


def boolean(doc: str, default: Any = REQUIRED, **kw: Any) -> Any:
    """A true/false key."""
    return _field(Spec("bool", doc, default, **kw))


def decimal(doc: str, default: Any = REQUIRED, **kw: Any) -> Any:
    """A Decimal key; accepts TOML numbers or numeric strings."""
    return _field(Spec("decimal", doc, default, **kw))


def money(doc: str, default: Any = REQUIRED, **kw: Any) -> Any:
    """An amount in major units, stored as int minor units of the configured currency."""
    return _field(Spec("money", doc, default, **kw))


def choice(doc: str, default: Any, choices: Sequence[str], **kw: Any) -> Any:
    """A string key limited to ``choices``."""
    return _field(Spec("choice", doc, default, choices=tuple(choices), **kw))


def text_list(doc: str, default: Any = (), **kw: Any) -> Any:
    """An array of strings (each checked like a ``text`` key), stored as a tuple."""
    return _field(Spec("list", doc, list(default) if isinstance(default, tuple) else default, **kw))


def section(table: type[Table], doc: str, **kw: Any) -> Any:
    """A nested table whose keys all have defaults."""
    return _field(Spec("table", doc, {}, table=table, **kw))


def table_map(table: type[Table], doc: str, default: Any, key_name: str, **kw: Any) -> Any:
    """Tables keyed by a code, ``[a.b.<code>]``, stored as a read-only mapping."""
    return _field(Spec("map", doc, default, table=table, key_name=key_name, **kw))


def table_array(table: type[Table], doc: str, **kw: Any) -> Any:
    """An array of tables, ``[[a.b]]``, stored as a tuple; empty by default."""
    return _field(Spec("array", doc, [], table=table, **kw))


class Table:
    """Base of every schema dataclass."""

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        """Cross-key checks once every key is valid: yields (key, problem); ``given`` = keys in the file."""
        return iter(())


def spec_of(f: dataclasses.Field[Any]) -> Spec:
    """The :class:`Spec` stored in a schema field's metadata."""
    spec = f.metadata["spec"]
    assert isinstance(spec, Spec)
    return spec


def schema_fields(table: type[Table]) -> Iterator[tuple[str, dataclasses.Field[Any], Spec]]:
    """(TOML key, dataclass field, spec) for each key of a schema table, in order."""
    for f in dataclasses.fields(table):  # type: ignore[arg-type]
        spec = spec_of(f)
        yield spec.toml or f.name, f, spec


# --------------------------------------------------------------------------- validators


def _hint(word: str, options: Sequence[str], fmt: str = "'{}'") -> str:
    lowered = {o.lower(): o for o in options}
    match = lowered.get(word.lower())
    if match is None:
        close = difflib.get_close_matches(word, list(options), n=1)
        match = close[0] if close else None
    return f"; did you mean {fmt.format(match)}?" if match is not None else ""


def _check_timezone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return "is not a known IANA time zone" + _hint(value, sorted(zoneinfo.available_timezones()), '"{}"')
    return None


def _check_currency(value: str) -> str | None:
    from babel.numbers import is_currency

    if re.fullmatch(r"[A-Z]{3}", value) and is_currency(value):
        return None
    hint = f'; did you mean "{value.upper()}"?' if is_currency(value.upper()) else ""
    return "is not an ISO 4217 currency code" + hint


def _check_locale(value: str) -> str | None:
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(value)
    except (UnknownLocaleError, ValueError, TypeError):
        hint = ""
        if "-" in value and _check_locale(value.replace("-", "_")) is None:
            hint = f'; did you mean "{value.replace("-", "_")}"?'
        return "is not a known locale" + hint
    return None


def _check_broker(value: str) -> str | None:
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        return "is not a valid URL"
    if url.scheme not in ("mqtt", "mqtts"):
        return "must start with mqtt:// or mqtts://"
    if not url.hostname:
        return "has no host name"
    if url.path not in ("", "/") or url.query or url.fragment:
        return "must be only scheme, host and port"
    if port == 0:
        return "has port 0"
    return None


def _check_host(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            return "is not an IP address or host name"
    return None


def _check_relative_file(value: str) -> str | None:
    path = PurePosixPath(value)
    if path.is_absolute() or "\\" in value or value.endswith("/"):
        return "must be a relative file name"
    if ".." in path.parts or path.name in ("", "."):
        return "must be a file name inside the data directory"
    return None


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True, kw_only=True)
class StoreSection(Table):
    """[store]: who and where this till is."""

    id: str = text(
        "Store identifier, unique within the chain; used in sale ids and sync topics.",
        "demo",
        pattern=_SLUG,
        allowed=_SLUG_TEXT,
    )
    device_id: str = text("Identifier of this till within the store.", "till-1", pattern=_SLUG, allowed=_SLUG_TEXT)
    name: str = text("Store name printed at the top of receipts.", "Demo Store", nonempty=True)
    address: tuple[str, ...] = text_list("Address lines printed under the store name on receipts.")
    timezone: str = text(
        "IANA time zone of the store, for business days, receipts and reports.",
        "UTC",
        check=_check_timezone,
        allowed='IANA time zone name, e.g. "Europe/Berlin"',
    )
    tax_id: str = text("Tax or VAT registration number printed on receipts; empty to omit.", "")


@dataclass(frozen=True, kw_only=True)
class CurrencySection(Table):
    """[currency]: the one currency this till sells in."""

    code: str = text(
        "ISO 4217 code of the currency all prices and amounts are in.",
        "EUR",
        check=_check_currency,
        allowed='ISO 4217 code known to Babel, e.g. "EUR", "CHF", "JPY"',
    )
    locale: str = text(
        "Locale for formatting amounts and dates on receipts and screens.",
        "de_DE",
        check=_check_locale,
        allowed='Babel locale identifier, e.g. "de_DE", "en_US"',
    )
    cash_rounding: int = integer(
        "Cash totals round to a multiple of this many minor units (1 = none, 5 for CHF).", 1, lo=1, hi=100
    )
    rounding_mode: RoundingMode = choice(
        "How half minor units round in tax and discount arithmetic.", "half_up", get_args(RoundingMode)
    )


@dataclass(frozen=True, kw_only=True)
class TaxRateEntry(Table):
    """One tax rate."""

    name: str = text("Rate name printed on receipts and reports.", nonempty=True)
    percent: Decimal = decimal('Rate in percent, e.g. 19 or "7.5".', lo=0, hi=100, hi_open=True)


@dataclass(frozen=True, kw_only=True)
class ExemptionEntry(Table):
    """A threshold rule of a tax class."""

    threshold: int = money("Amount the rule compares each item's price to.", lo=0, lo_open=True)
    mode: ExemptionMode = choice(
        "below: no tax while the price is below the threshold; excess: tax only the part above it.",
        REQUIRED,
        get_args(ExemptionMode),
    )
    rates: tuple[str, ...] = text_list(
        "Rates of the class the rule applies to; empty for all of them.",
        pattern=_CODE,
        allowed="codes listed in the class's rates",
        unique=True,
    )


@dataclass(frozen=True, kw_only=True)
class TaxClassEntry(Table):
    """A tax class that catalog items refer to."""

    rates: tuple[str, ...] = text_list(
        "Codes of the rates charged on items of this class; empty for tax-exempt items.",
        REQUIRED,
        pattern=_CODE,
        allowed="codes defined under [tax.rates]",
        unique=True,
    )
    exemptions: tuple[ExemptionEntry, ...] = table_array(
        ExemptionEntry, "Threshold rules of the class, e.g. clothing under 110.00 is exempt; none by default."
    )


_DEFAULT_RATES: Final = {
    "standard": {"name": "Standard rate", "percent": Decimal(19)},
    "reduced": {"name": "Reduced rate", "percent": Decimal(7)},
}
_DEFAULT_CLASSES: Final = {
    "standard": {"rates": ["standard"]},
    "reduced": {"rates": ["reduced"]},
    "exempt": {"rates": []},
}


@dataclass(frozen=True, kw_only=True)
class TaxSection(Table):
    """[tax]: rates, classes and how tax is computed."""

    prices_include_tax: bool = boolean(
        "Prices include tax (gross, as in the EU); false adds tax on top (US style).", True
    )
    rounding: TaxRounding = choice(
        "Round tax on each line, or once per rate over the whole sale.", "line", get_args(TaxRounding)
    )
    rates: Mapping[str, TaxRateEntry] = table_map(
        TaxRateEntry,
        "Tax rates by code. Giving any replaces all the default rates.",
        _DEFAULT_RATES,
        key_name="code",
        pattern=_CODE,
        allowed=_CODE_TEXT,
    )
    classes: Mapping[str, TaxClassEntry] = table_map(
        TaxClassEntry,
        "Tax classes by name; catalog items name their class. Giving any replaces all the defaults.",
        _DEFAULT_CLASSES,
        key_name="name",
        pattern=_CODE,
        allowed=_CODE_TEXT,
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        known = sorted(self.rates)
        if "classes" not in given:
            missing = sorted({c for cls in self.classes.values() for c in cls.rates} - set(self.rates))
            if missing:
                names = ("rates " if len(missing) > 1 else "rate ") + ", ".join(f"'{c}'" for c in missing)
                yield "classes", f"the default classes use {names}; define [tax.classes.*] for your rates"
            return
        for name, cls in self.classes.items():
            for code in cls.rates:
                if code not in self.rates:
                    defined = ", ".join(f"'{c}'" for c in known) or "none"
                    yield (
                        f"classes.{name}.rates",
                        f"unknown rate '{code}'{_hint(code, known)} (defined rates: {defined})",
                    )
            if cls.exemptions and not cls.rates:
                yield f"classes.{name}.exemptions", f"class '{name}' has no rates to exempt"
            for i, exemption in enumerate(cls.exemptions, 1):
                for code in exemption.rates:
                    if code not in cls.rates:
                        yield (
                            f"classes.{name}.exemptions[{i}].rates",
                            f"rate '{code}' is not one of the rates of class '{name}'",
                        )


@dataclass(frozen=True, kw_only=True)
class VariableMeasureEntry(Table):
    """Layout of an in-store EAN-13 carrying a price or weight."""

    prefix: str = text(
        "GS1 prefix of these codes.",
        check=lambda v: None if v == "02" or re.fullmatch(r"2[0-9]", v) else 'is not "02" or "20".."29"',
        allowed='"02" or "20".."29"',
    )
    kind: LayoutKind = choice("Whether the value field is a price or a weight.", REQUIRED, get_args(LayoutKind))
    item_digits: int = integer("Digits of the item number after the prefix.", 5, lo=1, hi=9)
    value_digits: int = integer("Digits of the price or weight field.", 5, lo=1, hi=9)
    value_decimals: int = integer("Implied decimals of the value: 2 for cents, 3 for kilograms in grams.", lo=0, hi=5)
    price_check_digit: bool = boolean("A price check digit sits between item number and value.", False)

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        total = self.item_digits + self.value_digits + int(self.price_check_digit)
        if total != 10:
            extra = " + 1 (price check digit)" if self.price_check_digit else ""
            yield (
                "item_digits",
                f"item_digits + value_digits{extra} must be 10 to fill an EAN-13, got {total}",
            )
        if self.price_check_digit and self.value_digits not in (4, 5):
            yield "value_digits", f"a price check digit needs 4 or 5 value digits, got {self.value_digits}"
        if self.value_decimals > self.value_digits:
            yield "value_decimals", f"{self.value_decimals} is more than value_digits ({self.value_digits})"


@dataclass(frozen=True, kw_only=True)
class BarcodesSection(Table):
    """[barcodes]: how scanned codes are read."""

    variable_measure: tuple[VariableMeasureEntry, ...] = table_array(
        VariableMeasureEntry,
        "Price/weight-embedded EAN-13 layouts; none given uses the barcode module's built-in layouts.",
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        seen: set[str] = set()
        for i, layout in enumerate(self.variable_measure, 1):
            if layout.prefix in seen:
                yield f"variable_measure[{i}].prefix", f'prefix "{layout.prefix}" is already used'
            seen.add(layout.prefix)


@dataclass(frozen=True, kw_only=True)
class SaleSection(Table):
    """[sale]: limits that catch mistyped quantities and amounts."""

    max_quantity: int = integer("Largest quantity of one line.", 999, lo=1, hi=9999)
    max_weight_kg: Decimal = decimal(
        "Largest weight of one weighed line, in kilograms.", Decimal(50), lo=0, lo_open=True, hi=1000
    )
    max_line_amount: int = money("Largest amount of one line.", "10000.00", lo=0, lo_open=True)
    max_sale_amount: int = money("Largest total of one sale.", "100000.00", lo=0, lo_open=True)
    discount_approval_percent: Decimal = decimal(
        "Manual discounts above this percentage need a supervisor's approval.", Decimal(20), lo=0, hi=100
    )
    age_restriction_min_age: int = integer("Minimum age for age-restricted items.", 18, lo=0, hi=25)

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        if self.max_line_amount > self.max_sale_amount:
            yield "max_line_amount", "must not exceed max_sale_amount"


@dataclass(frozen=True, kw_only=True)
class LedgerSection(Table):
    """[ledger]: the local SQLite journal of sales."""

    path: str = text(
        "Ledger database file, relative to the data directory.",
        "ledger.db",
        check=_check_relative_file,
        allowed="relative path without '..'",
    )
    synchronous: SyncMode = choice(
        "SQLite synchronous mode: FULL survives power loss; EXTRA also syncs the directory.",
        "FULL",
        get_args(SyncMode),
    )
    outbox_retention_days: int = integer("Days synced outbox entries are kept.", 30, lo=1, hi=3650)
    wal_autocheckpoint: int = integer("SQLite WAL auto-checkpoint threshold, in pages.", 1000, lo=100, hi=100000)


# ---- device sections ([devices] and [devices.<device>]); the manager is drivers/manager.py

ScannerKind = Literal["evdev", "serial", "none"]
PrinterKind = Literal["usb", "serial", "network", "file", "none"]
DrawerKind = Literal["printer", "gpio", "companion", "none"]
DrawerSensorKind = Literal["none", "printer", "gpio", "companion"]
TerminalKind = Literal["zvt-serial", "zvt-tcp", "none"]
BadgeKind = Literal["evdev", "none"]
DisplayKind = Literal["serial", "printer", "none"]
ScaleKind = Literal["serial", "none"]
CompanionKind = Literal["usb", "none"]
KeyboardLayout = Literal["us", "de"]
TerminatorName = Literal["enter", "tab", "cr", "lf", "crlf", "none"]
WedgeTerminator = Literal["enter", "tab", "none"]
ReferenceCode = Literal["code128", "qr", "none"]
CutMode = Literal["partial", "full", "none"]
Level = Literal["high", "low"]
SerialFormat = Literal["7E1", "7O1", "7N2", "8N1", "8E1", "8O1"]
WeightUnitName = Literal["kg", "lb"]

_HEX4 = r"[0-9A-Fa-f]{4}"
_HEX4_TEXT = 'four hex digits as lsusb shows them, e.g. "04b8"'
_HEX2 = r"[0-9A-Fa-f]{2}"
_BAUD_LO, _BAUD_HI = 300, 921_600


def _check_device_path(value: str) -> str | None:
    path = PurePosixPath(value)
    if not value:
        return None
    if not path.is_absolute() or ".." in path.parts or value.endswith("/") or any(c.isspace() for c in value):
        return "is not an absolute device path such as /dev/tillbox/scanner"
    return None


def _check_optional_host(value: str) -> str | None:
    return _check_host(value) if value else None


def _check_optional_file(value: str) -> str | None:
    return _check_relative_file(value) if value else None


def _check_code_page(value: str) -> str | None:
    from appliance.errors import TillboxError
    from drivers.escpos_codec import CODE_PAGES, code_page

    try:
        code_page(value)
    except TillboxError:
        return "is not a supported code page" + _hint(value, list(CODE_PAGES), '"{}"')
    return None


def _device_path(doc: str, default: str) -> Any:
    return text(doc, default, check=_check_device_path, allowed="absolute path, e.g. /dev/tillbox/...")


def _baudrate(doc: str = "Serial speed in baud.", default: int = 9600) -> Any:
    return integer(doc, default, lo=_BAUD_LO, hi=_BAUD_HI)


def _needs_device(kind: str, device: str, wanted: Sequence[str]) -> Iterator[tuple[str, str]]:
    if kind in wanted and not device:
        yield "device", f'kind = "{kind}" needs a device path'


@dataclass(frozen=True, kw_only=True)
class ScannerSection(Table):
    """[devices.scanner]: the barcode scanner."""

    kind: ScannerKind = choice(
        "evdev reads a USB keyboard-wedge scanner, serial a CDC/RS-232 scanner; none for no scanner.",
        "evdev",
        get_args(ScannerKind),
    )
    device: str = _device_path("evdev event node or serial port of the scanner.", "/dev/tillbox/scanner")
    layout: KeyboardLayout = choice(
        "Keyboard layout the wedge scanner types in (evdev).", "us", get_args(KeyboardLayout)
    )
    terminator: TerminatorName = choice(
        "What ends a code: enter, tab or none (a pause) for evdev; enter (= cr), cr, lf or crlf for serial.",
        "enter",
        get_args(TerminatorName),
    )
    stx_etx: bool = boolean("Serial codes arrive framed as STX data ETX (the terminator is then ignored).", False)
    baudrate: int = _baudrate()
    scan_timeout_ms: int = integer(
        "A pause this long ends a scan; unterminated keys before it are dropped (evdev).", 100, lo=20, hi=2000
    )
    key_gap_ms: int = integer(
        "Median gap between key presses above which input counts as typed by hand (evdev).", 30, lo=1, hi=1000
    )
    max_gap_ms: int = integer(
        "Longest single gap inside one scan; a longer one means hand typing (evdev).", 60, lo=1, hi=2000
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        yield from _needs_device(self.kind, self.device, ("evdev", "serial"))
        if self.kind == "evdev" and self.terminator not in get_args(WedgeTerminator):
            yield "terminator", f'"{self.terminator}" is for serial scanners; use "enter", "tab" or "none"'
        if self.kind == "serial" and not self.stx_etx and self.terminator in ("tab", "none"):
            yield "terminator", f'"{self.terminator}" is for evdev scanners; use "enter", "cr", "lf" or "crlf"'
        if not self.key_gap_ms <= self.max_gap_ms <= self.scan_timeout_ms:
            yield "max_gap_ms", "needs key_gap_ms <= max_gap_ms <= scan_timeout_ms"


@dataclass(frozen=True, kw_only=True)
class PrinterSection(Table):
    """[devices.printer]: the ESC/POS receipt printer."""

    kind: PrinterKind = choice(
        "usb (pyusb, with status), serial, network (raw TCP), file (a device file such as a usblp node), or none.",
        "usb",
        get_args(PrinterKind),
    )
    vendor_id: str = text("USB vendor id of a usb printer.", "04b8", pattern=_HEX4, allowed=_HEX4_TEXT)
    product_id: str = text("USB product id of a usb printer.", "0202", pattern=_HEX4, allowed=_HEX4_TEXT)
    in_endpoint: str = text(
        "USB bulk IN endpoint of a usb printer, in hex.", "82", pattern=_HEX2, allowed="two hex digits"
    )
    out_endpoint: str = text(
        "USB bulk OUT endpoint of a usb printer, in hex.", "01", pattern=_HEX2, allowed="two hex digits"
    )
    device: str = _device_path("Serial port or device file of a serial or file printer.", "/dev/tillbox/printer")
    baudrate: int = _baudrate()
    host: str = text(
        "Host of a network printer.",
        "",
        check=_check_optional_host,
        allowed="IP address or host name; empty when unused",
    )
    port: int = integer("TCP port of a network printer.", 9100, lo=1, hi=65535)
    paper_mm: int = integer("Paper width in millimetres: 58 or 80.", 80, lo=58, hi=80, allowed="58 or 80")
    columns: int = integer(
        "Characters per line; 0 takes the paper's default (58 mm: 32, 80 mm: 48; 42 also fits 80 mm).",
        0,
        lo=0,
        hi=64,
    )
    code_page: str = text(
        "Code page for receipt text (CP858 has the euro sign).",
        "CP858",
        check=_check_code_page,
        allowed='a code page of the printer codec, e.g. "CP858", "CP437", "CP1252"',
    )
    code_table: int = integer(
        "ESC t number of the code page, for printers that number tables differently; -1 uses Epson's.",
        -1,
        lo=-1,
        hi=255,
    )
    status_check: bool = boolean(
        "Ask the printer's status (paper, cover) before each receipt; file printers never do.", True
    )
    reference_code: ReferenceCode = choice(
        "How the sale reference is printed at the bottom of receipts.", "code128", get_args(ReferenceCode)
    )
    cut: CutMode = choice("Paper cut after each receipt.", "partial", get_args(CutMode))
    logo: str = text(
        "Image printed at the top of receipts, relative to the data directory; empty for none.",
        "",
        check=_check_optional_file,
        allowed="relative path without '..', or empty",
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        from appliance.errors import TillboxError
        from drivers.escpos_codec import PrinterProfile

        yield from _needs_device(self.kind, self.device, ("serial", "file"))
        if self.kind == "network" and not self.host:
            yield "host", 'kind = "network" needs a host'
        if self.paper_mm not in (58, 80):
            yield "paper_mm", f"{self.paper_mm} is not 58 or 80"
            return
        try:
            PrinterProfile(
                paper_mm=self.paper_mm,
                code_page=self.code_page,
                columns=self.columns,
                code_table=None if self.code_table < 0 else self.code_table,
            )
        except TillboxError as exc:
            yield "columns", str(exc)


@dataclass(frozen=True, kw_only=True)
class DrawerSection(Table):
    """[devices.drawer]: the cash drawer."""

    kind: DrawerKind = choice(
        "How the drawer is kicked: through the printer, a GPIO pin, a companion board output, or none.",
        "printer",
        get_args(DrawerKind),
    )
    kick_pin: int = integer(
        "Printer drawer connector pin that fires the solenoid: 2 or 5.", 2, lo=2, hi=5, allowed="2 or 5"
    )
    pulse_ms: int = integer("Length of the kick pulse, in milliseconds.", 100, lo=10, hi=500)
    gpio_pin: int = integer("BCM number of the GPIO output driving the drawer relay.", 17, lo=2, hi=27)
    gpio_active_high: bool = boolean("The GPIO output fires the drawer when high.", True)
    companion_output: int = integer("Companion board output wired to the drawer.", 0, lo=0, hi=7)
    sensor: DrawerSensorKind = choice(
        "Where the open/closed switch is read: none, the printer (connector pin 3), GPIO or the companion board.",
        "none",
        get_args(DrawerSensorKind),
    )
    sensor_gpio_pin: int = integer(
        "BCM number of the GPIO input of the drawer switch (internal pull-up).", 27, lo=2, hi=27
    )
    sensor_input: int = integer("Companion board input of the drawer switch.", 1, lo=0, hi=7)
    sensor_open_level: Level = choice(
        "Level of the switch line while the drawer is open (companion: low = input active); flip it if inverted.",
        "high",
        get_args(Level),
    )
    sensor_poll_ms: int = integer("How often the drawer switch is read, in milliseconds.", 1000, lo=100, hi=10000)
    left_open_seconds: int = integer(
        "Raise a 'drawer left open' alert after this many seconds (needs a sensor).", 60, lo=5, hi=3600
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        if self.kick_pin not in (2, 5):
            yield "kick_pin", f"{self.kick_pin} is not 2 or 5"
        if self.kind == "gpio" and self.sensor == "gpio" and self.gpio_pin == self.sensor_gpio_pin:
            yield "sensor_gpio_pin", f"GPIO {self.gpio_pin} is already the drawer output"


@dataclass(frozen=True, kw_only=True)
class TerminalSection(Table):
    """[devices.terminal]: the card payment terminal (ZVT)."""

    kind: TerminalKind = choice("ZVT over a serial line or over TCP, or none.", "none", get_args(TerminalKind))
    device: str = _device_path("Serial port of a zvt-serial terminal.", "/dev/tillbox/terminal")
    baudrate: int = _baudrate("Serial speed of a zvt-serial terminal, in baud.")
    host: str = text(
        "Host of a zvt-tcp terminal.",
        "",
        check=_check_optional_host,
        allowed="IP address or host name; empty when unused",
    )
    port: int = integer("TCP port of a zvt-tcp terminal.", 20007, lo=1, hi=65535)
    password: str = text(
        "The terminal's six-digit ECR password (the factory default is 000000).",
        "000000",
        pattern=r"[0-9]{6}",
        allowed="six digits",
    )
    ack_timeout_seconds: Decimal = decimal(
        "ZVT time-out T3: wait for the terminal's acknowledgement (80 00 / 84 xx) of a command, in seconds.",
        Decimal(5),
        lo=Decimal("0.5"),
        hi=60,
    )
    response_timeout_seconds: Decimal = decimal(
        "ZVT time-out T4: longest silence between that acknowledgement and the completion, in seconds.",
        Decimal(180),
        lo=10,
        hi=600,
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        yield from _needs_device(self.kind, self.device, ("zvt-serial",))
        if self.kind == "zvt-tcp" and not self.host:
            yield "host", 'kind = "zvt-tcp" needs a host'
        if self.ack_timeout_seconds >= self.response_timeout_seconds:
            yield "ack_timeout_seconds", "must be shorter than response_timeout_seconds"


@dataclass(frozen=True, kw_only=True)
class BadgeSection(Table):
    """[devices.badge]: the staff badge / loyalty card reader (never payment cards)."""

    kind: BadgeKind = choice(
        "evdev reads a keyboard-wedge magstripe or NFC reader; none for no reader.", "none", get_args(BadgeKind)
    )
    device: str = _device_path("evdev event node of the reader.", "/dev/tillbox/badge")
    layout: KeyboardLayout = choice("Keyboard layout the reader types in.", "us", get_args(KeyboardLayout))
    terminator: WedgeTerminator = choice(
        "What ends a read: enter, tab or none (a pause).", "enter", get_args(WedgeTerminator)
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        yield from _needs_device(self.kind, self.device, ("evdev",))


@dataclass(frozen=True, kw_only=True)
class DisplaySection(Table):
    """[devices.display]: the customer pole display (Epson command set)."""

    kind: DisplayKind = choice(
        "serial for a VFD/LCD pole display on its own port; printer for one daisy-chained behind the receipt "
        "printer (frames go through the printer, selected with ESC =); or none.",
        "none",
        get_args(DisplayKind),
    )
    device: str = _device_path("Serial port of the display.", "/dev/tillbox/display")
    baudrate: int = _baudrate()
    columns: int = integer("Characters per row.", 20, lo=8, hi=40)
    rows: int = integer("Rows of text.", 2, lo=1, hi=4)
    code_page: str = text(
        "Code page of the display's character set.",
        "CP437",
        check=_check_code_page,
        allowed='a code page of the printer codec, e.g. "CP437", "CP858"',
    )
    code_table: int = integer(
        "ESC t number of the code page, for displays that number tables differently; -1 uses Epson's.",
        -1,
        lo=-1,
        hi=255,
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        yield from _needs_device(self.kind, self.device, ("serial",))


@dataclass(frozen=True, kw_only=True)
class ScaleSection(Table):
    """[devices.scale]: a serial scale speaking Mettler Toledo 8217."""

    kind: ScaleKind = choice("serial for an 8217 scale, or none.", "none", get_args(ScaleKind))
    device: str = _device_path("Serial port of the scale.", "/dev/tillbox/scale")
    baudrate: int = _baudrate()
    serial_format: SerialFormat = choice(
        "Data bits, parity and stop bits of the scale's line.", "7E1", get_args(SerialFormat)
    )
    unit: WeightUnitName = choice("The unit the scale is set up to weigh in.", "kg", get_args(WeightUnitName))
    reply_timeout_ms: int = integer("How long to wait for the scale's answer, in milliseconds.", 500, lo=50, hi=5000)

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        yield from _needs_device(self.kind, self.device, ("serial",))


@dataclass(frozen=True, kw_only=True)
class CompanionSection(Table):
    """[devices.companion]: the self-checkout companion board (light tower, help button)."""

    kind: CompanionKind = choice("usb for the Pico companion board, or none.", "none", get_args(CompanionKind))
    device: str = _device_path(
        "Serial port of the board; empty finds it by vendor_id and product_id.", "/dev/tillbox/companion"
    )
    vendor_id: str = text(
        "USB vendor id used to find the board when device is empty.", "2e8a", pattern=_HEX4, allowed=_HEX4_TEXT
    )
    product_id: str = text(
        "USB product id used to find the board when device is empty.", "0005", pattern=_HEX4, allowed=_HEX4_TEXT
    )
    heartbeat_timeout_seconds: Decimal = decimal(
        "The board shows its help light when the till is silent this long, in seconds.",
        Decimal(3),
        lo=Decimal("0.5"),
        hi=60,
    )


@dataclass(frozen=True, kw_only=True)
class DevicesSection(Table):
    """[devices]: scanner, printer, drawer and other peripherals."""

    mode: DeviceMode = choice(
        f"sim simulates every configured device, real drives the hardware; {ENV_DEVICES}=sim forces sim.",
        "sim",
        get_args(DeviceMode),
    )
    hotplug: bool = boolean("Watch udev for devices being plugged in and out (needs pyudev).", True)
    reconnect_initial_seconds: Decimal = decimal(
        "First wait before reopening a lost device; it doubles up to reconnect_max_seconds.",
        Decimal(1),
        lo=Decimal("0.1"),
        hi=60,
    )
    reconnect_max_seconds: Decimal = decimal("Longest wait between two reopen attempts.", Decimal(30), lo=1, hi=3600)
    scanner: ScannerSection = section(ScannerSection, "The barcode scanner.")
    printer: PrinterSection = section(PrinterSection, "The receipt printer.")
    drawer: DrawerSection = section(DrawerSection, "The cash drawer.")
    terminal: TerminalSection = section(TerminalSection, "The card payment terminal.")
    badge: BadgeSection = section(BadgeSection, "The staff badge and loyalty card reader.")
    display: DisplaySection = section(DisplaySection, "The customer pole display.")
    scale: ScaleSection = section(ScaleSection, "The scale.")
    companion: CompanionSection = section(CompanionSection, "The self-checkout companion board.")

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        if self.reconnect_initial_seconds > self.reconnect_max_seconds:
            yield "reconnect_initial_seconds", "must not exceed reconnect_max_seconds"
        drawer, printer = self.drawer, self.printer
        if drawer.kind == "printer" and printer.kind == "none":
            yield "drawer.kind", 'kicking through the printer needs [devices.printer] kind other than "none"'
        if self.display.kind == "printer" and printer.kind == "none":
            yield "display.kind", 'a display behind the printer needs [devices.printer] kind other than "none"'
        no_status = printer.kind in ("none", "file") or not printer.status_check
        if drawer.kind != "none" and drawer.sensor == "printer" and no_status:
            yield "drawer.sensor", "reading the drawer through the printer needs a printer with status_check"
        if self.companion.kind == "none":
            if drawer.kind == "companion":
                yield "drawer.kind", 'a companion drawer needs [devices.companion] kind = "usb"'
            if drawer.kind != "none" and drawer.sensor == "companion":
                yield "drawer.sensor", 'a companion sensor needs [devices.companion] kind = "usb"'
        used: dict[str, str] = {}
        for name, path in self.device_paths().items():
            if path in used:
                yield f"{name}.device", f"{path} is already used by [devices.{used[path]}]"
            used.setdefault(path, name)

    def device_paths(self) -> dict[str, str]:
        """Device paths of the enabled devices that are reached through one, by device name."""
        paths = {
            "scanner": self.scanner.device if self.scanner.kind != "none" else "",
            "printer": self.printer.device if self.printer.kind in ("serial", "file") else "",
            "terminal": self.terminal.device if self.terminal.kind == "zvt-serial" else "",
            "badge": self.badge.device if self.badge.kind != "none" else "",
            "display": self.display.device if self.display.kind == "serial" else "",
            "scale": self.scale.device if self.scale.kind != "none" else "",
            "companion": self.companion.device if self.companion.kind != "none" else "",
        }
        return {name: path for name, path in paths.items() if path}


@dataclass(frozen=True, kw_only=True)
class SyncSection(Table):
    """[sync]: sending sales to the store server over MQTT."""

    enabled: bool = boolean("Send ledger events to the store server.", False)
    brokers: tuple[str, ...] = text_list(
        "MQTT broker URLs, tried in order.",
        check=_check_broker,
        allowed="mqtt://host[:port] or mqtts://host[:port]",
        unique=True,
    )
    client_id: str = text(
        "MQTT client id; empty derives it from the store and device ids.",
        "",
        pattern=r"[A-Za-z0-9._-]{0,64}",
        allowed="letters, digits, '.', '_' and '-', at most 64 characters",
        default_doc='`""` (derived: `tillbox-<store.id>-<store.device_id>`)',
    )
    keepalive: int = integer("MQTT keepalive interval, in seconds.", 60, lo=5, hi=1200)
    username: str = text(
        "MQTT user name; empty connects without one.",
        "",
        pattern=r"[^\s]{0,128}",
        allowed="up to 128 characters without spaces",
    )
    password_file: str = text("File holding the MQTT password (first line); empty for none.", "")
    tls_ca_file: str = text("CA bundle for mqtts:// brokers; empty uses the system CAs.", "")
    tls_cert_file: str = text("Client certificate (PEM) for mqtts:// brokers; empty for none.", "")
    tls_key_file: str = text("Private key (PEM) of the client certificate.", "")
    reconnect_max_delay: int = integer(
        "Cap of the reconnect back-off, in seconds (it starts at 1 s and doubles).", 60, lo=1, hi=3600
    )
    inflight_window: int = integer("Events published but not yet acknowledged by the broker.", 100, lo=1, hi=10000)
    ack_timeout: int = integer(
        "Seconds without an end-to-end ack from the shop before unacknowledged events are sent again.",
        60,
        lo=5,
        hi=86400,
    )
    backlog_alert_minutes: int = integer(
        "Raise an alert when the oldest unacknowledged event is older than this.", 15, lo=1, hi=10080
    )
    max_inbound_bytes: int = integer("Largest inbound message accepted, in bytes.", 8_388_608, lo=1024, hi=268_435_456)
    session_expiry_hours: int = integer(
        "How long the broker keeps this till's session (and queued commands) while it is offline.",
        24,
        lo=0,
        hi=8760,
    )
    reconcile_minutes: int = integer(
        "Interval of the stock and sequence reconciliation with the shop.", 60, lo=1, hi=10080
    )
    restart_for_config: bool = boolean(
        "When the shop's desired configuration is accepted, restart the daemon as soon as the till is idle (no "
        "open sale, no payment in progress) so that it takes effect; only under systemd, which starts it again.",
        True,
    )
    catalog_max_age_hours: int = integer(
        "Alert (sync.catalog_stale) when the catalog from the shop has not been confirmed current for this many "
        "hours; 0 turns the warning off.",
        24,
        lo=0,
        hi=8760,
    )
    customer_cache_days: int = integer(
        "Days a customer record from the shop stays on this till (only with the customer's consent) after the "
        "shop last confirmed it.",
        30,
        lo=1,
        hi=90,
    )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        if self.enabled and not self.brokers:
            yield "brokers", "at least one broker is needed when enabled = true"
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            yield "tls_key_file", "tls_cert_file and tls_key_file must be given together"


@dataclass(frozen=True, kw_only=True)
class UiSection(Table):
    """[ui]: the kiosk web interface."""

    listen_host: str = text(
        "Address the UI server listens on; 127.0.0.1 keeps it local to the till.",
        "127.0.0.1",
        check=_check_host,
        allowed="IP address or host name",
    )
    port: int = integer("TCP port of the UI server.", 8080, lo=1, hi=65535)
    languages: tuple[str, ...] = text_list(
        "Languages the UI offers, as locale codes.",
        ("en", "de"),
        check=_check_locale,
        nonempty=True,
        unique=True,
        allowed='one or more Babel locale codes, e.g. "en", "de", "pt_BR"',
    )
    default_language: str = text("Language shown at start.", "en", check=_check_locale, allowed="one of languages")

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        if self.default_language not in self.languages:
            yield "default_language", f"'{self.default_language}' is not listed in languages"


@dataclass(frozen=True, kw_only=True)
class StaffSection(Table):
    """[staff]: logins, lockout and approvals."""

    free_attempts: int = integer("Wrong PINs allowed before a lockout starts.", 3, lo=1, hi=10)
    first_lock_seconds: int = integer(
        "First lockout after too many wrong PINs, in seconds; each further failure doubles it.", 30, lo=1, hi=3600
    )
    max_lock_minutes: int = integer("Longest lockout, in minutes.", 15, lo=1, hi=1440)
    approval_seconds: int = integer("How long a supervisor's approval stays valid, in seconds.", 60, lo=5, hi=600)
    session_minutes: int = integer("Idle minutes before a staff session on the UI ends.", 15, lo=1, hi=720)


@dataclass(frozen=True, kw_only=True)
class ReturnsSection(Table):
    """[returns]: refunds, returns and exchanges."""

    refund_to: RefundTarget = choice(
        "Where refunds go: original tenders where possible (cards back to the card, rest cash), cash, or store credit.",
        "original",
        get_args(RefundTarget),
    )
    max_days: int = integer("Days after a sale within which a receipted return is accepted.", 30, lo=0, hi=3650)
    no_receipt_limit: int = money("Largest refund of a return without a receipt.", "50.00", lo=0)


@dataclass(frozen=True, kw_only=True)
class OrdersSection(Table):
    """[orders]: pickup and ship-from-store orders from the online shop."""

    hold_days: int = integer(
        "Days a pickup order is held once it is ready, when the shop gives no hold_until.", 7, lo=1, hi=90
    )
    expire: bool = boolean("This till expires uncollected pickup orders after their hold (freeing their stock).",
                           True)  # fmt: skip
    expiry_check_minutes: int = integer("How often this till looks for orders past their hold, in minutes.", 5,
                                        lo=1, hi=1440)  # fmt: skip
    code_attempts: int = integer(
        "Wrong pickup codes accepted for one order before only an ID check can hand it over.", 5, lo=1, hi=20
    )
    id_check: bool = boolean("Staff may hand an order over after checking the customer's ID instead of the code.",
                             True)  # fmt: skip
    keep_personal_days: int = integer(
        "Days after an order closed (collected, shipped, expired, cancelled) that this till keeps the customer's "
        "name, address and note on it; then they are dropped.",
        30,
        lo=1,
        hi=3650,
    )


@dataclass(frozen=True, kw_only=True)
class StoredValueSection(Table):
    """[stored_value]: gift cards and store credit; the shop's hub holds the balances (docs/accounts.md)."""

    offline_limit_per_card: int = money(
        "Most this till takes from one gift card or store credit account while the shop cannot be reached "
        "(offline redemptions not yet confirmed by the shop); 0 refuses offline redemptions.",
        "50.00",
        lo=0,
    )
    offline_limit_per_till: int = money(
        "Most this till takes from all gift cards and store credit together while offline (not yet confirmed).",
        "200.00", lo=0,
    )  # fmt: skip
    request_timeout: int = integer("Seconds to wait for the shop's answer to a balance or redemption.", 3, lo=1, hi=30)
    retries: int = integer(
        "Times an unanswered redemption is asked again with the same id before the till treats it as offline.",
        1, lo=0, hi=5,
    )  # fmt: skip
    gift_card_sku: str = text(
        "SKU of the line that sells or tops up a gift card.", "GIFTCARD", pattern=r"[\x21-\x7e]{1,64}",
        allowed="1-64 printable characters without spaces",
    )  # fmt: skip
    gift_card_tax_class: str = text("Tax class of gift card lines (a class without rates: vouchers are not taxed).",
                                    "exempt")  # fmt: skip
    max_gift_card: int = money("Largest amount a gift card can be sold or topped up with at the till.", "500.00", lo=0)


@dataclass(frozen=True, kw_only=True)
class LoyaltySection(Table):
    """[loyalty]: points earned on sales and redeemed as a tender; the shop's hub holds the balances."""

    enabled: bool = boolean("Earn points on sales with a customer attached, and take points as payment.", False)
    points_per_unit: Decimal = decimal("Points earned per whole currency unit spent (rounded down per sale).",
                                       Decimal(1), lo=0, hi=1000)  # fmt: skip
    point_value: int = integer("What one point pays when redeemed, in minor units (1: 0.01 EUR).", 1, lo=1,
                               hi=1_000_000)  # fmt: skip
    min_redeem_points: int = integer("Fewest points that can be redeemed at once.", 1, lo=1, hi=1_000_000)
    excluded_departments: tuple[str, ...] = text_list("Departments that earn no points.")
    excluded_tax_classes: tuple[str, ...] = text_list("Tax classes that earn no points.")
    offline_limit_per_customer: int = integer(
        "Most points this till redeems for one customer while the shop cannot be reached; 0 refuses.", 500,
        lo=0, hi=10_000_000,
    )  # fmt: skip
    offline_limit_per_till: int = integer("Most points this till redeems in all while offline (not yet confirmed).",
                                          2000, lo=0, hi=100_000_000)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class ReceiptSection(Table):
    """[receipt]: what receipts show beyond the sale."""

    footer: tuple[str, ...] = text_list("Lines printed at the bottom of every receipt.", ("Thank you!",))
    url_template: str = text(
        "Digital receipt link shown as a QR code; {store}, {device}, {id}, {number}, {reference} are "
        "filled in. Empty for none.",
        "",
    )


def _check_absolute_path(value: str) -> str | None:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or any(c.isspace() for c in value):
        return "is not an absolute path"
    return None


@dataclass(frozen=True, kw_only=True)
class UpdateSection(Table):
    """[update]: fetching the signed update bundles the shop offers (docs/image.md, "Delivering updates")."""

    fetch: bool = boolean("Download the update bundles the shop offers over sync; a root service installs them "
                          "once the till is idle (needs sync).", True)  # fmt: skip
    keys_dir: str = text("Directory of the trusted ed25519 public keys (*.pem) a fetched bundle must be signed "
                         "with.", "/etc/tillbox/update-keys", check=_check_absolute_path,
                         allowed="an absolute path")  # fmt: skip
    allow_http: bool = boolean("Accept http:// bundle URLs too (no transport security; the hash and signature are "
                               "still checked). https:// is always accepted, with the server's certificate "
                               "verified.", False)  # fmt: skip
    tls_ca_file: str = text("CA bundle (PEM) in the data directory for https:// downloads; empty uses the system "
                            "CAs.", "", check=_check_optional_file,
                            allowed="a file name in the data directory")  # fmt: skip
    max_bytes: int = integer("Largest bundle downloaded, in bytes (an offer may name a smaller size).", 536_870_912,
                             lo=1_048_576, hi=4_294_967_296)  # fmt: skip
    keep_free_mb: int = integer("Megabytes that must stay free on the data partition after a download (the ledger "
                                "needs room).", 256, lo=0, hi=65536)  # fmt: skip
    retries: int = integer("Times a download that failed on the network is tried again before it is given up "
                           "(until the offer comes again).", 5, lo=0, hi=20)  # fmt: skip
    retry_seconds: int = integer("Wait before the first retry, in seconds; it doubles each time, up to an hour.", 30,
                                 lo=1, hi=3600)  # fmt: skip
    timeout_seconds: int = integer("Network timeout of a download (connecting, and each read), in seconds.", 30,
                                   lo=1, hi=600)  # fmt: skip
    install_root: str = text("Where the installed versions are: read for the running version and the versions that "
                             "failed their health gate.", "/opt/tillbox", check=_check_absolute_path,
                             allowed="an absolute path")  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Config(Table):
    """The whole validated configuration. Build it with :func:`parse_config` or :func:`load_config`."""

    store: StoreSection = section(StoreSection, "Identity and location of the store and this till.")
    currency_settings: CurrencySection = section(
        CurrencySection,
        "The currency and how amounts are formatted and rounded (as `Config.currency_settings`).",
        toml="currency",
    )
    tax: TaxSection = section(TaxSection, "Tax rates, tax classes and how tax is computed.")
    barcodes: BarcodesSection = section(BarcodesSection, "Barcode interpretation.")
    sale: SaleSection = section(SaleSection, "Plausibility limits for sales.")
    staff: StaffSection = section(StaffSection, "Staff logins, lockout and approvals.")
    returns: ReturnsSection = section(ReturnsSection, "Returns, refunds and exchanges.")
    orders: OrdersSection = section(OrdersSection, "Pickup and ship-from-store orders from the online shop.")
    receipt: ReceiptSection = section(ReceiptSection, "Receipt footer and digital receipts.")
    stored_value: StoredValueSection = section(StoredValueSection, "Gift cards and store credit.")
    loyalty: LoyaltySection = section(LoyaltySection, "Loyalty points.")
    ledger: LedgerSection = section(LedgerSection, "The local SQLite ledger.")
    devices: DevicesSection = section(DevicesSection, "Peripheral devices.")
    sync: SyncSection = section(SyncSection, "Synchronisation with the store server over MQTT.")
    ui: UiSection = section(UiSection, "The kiosk user interface.")
    update: UpdateSection = section(UpdateSection, "Fetching the update bundles the shop offers.")

    @classmethod
    def defaults(cls) -> Config:
        """The configuration used when there is no file (demo mode); ignores the environment."""
        return parse_config("", source="<defaults>", environ={})

    @property
    def currency(self) -> Currency:
        """The configured currency."""
        return Currency.of(self.currency_settings.code)

    def ledger_path(self, data_dir: Path) -> Path:
        """Where the ledger database lives inside ``data_dir``."""
        return data_dir / self.ledger.path

    def tax_policy(self) -> TaxPolicy:
        """The tax rates and classes as an :class:`appliance.tax.TaxPolicy`."""
        from appliance.tax import Exemption, TaxClass, TaxPolicy, TaxRate

        rates = {
            code: TaxRate(code=code, name=rate.name, percent=rate.percent) for code, rate in self.tax.rates.items()
        }
        classes = {
            name: TaxClass(
                name=name,
                rates=cls.rates,
                exemptions=tuple(Exemption(threshold=e.threshold, mode=e.mode, rates=e.rates) for e in cls.exemptions),
            )
            for name, cls in self.tax.classes.items()
        }
        return TaxPolicy(
            rates=rates,
            classes=classes,
            prices_include_tax=self.tax.prices_include_tax,
            rounding=self.tax.rounding,
            rounding_mode=self.currency_settings.rounding_mode,
        )

    def barcode_layouts(self) -> tuple[VariableMeasureLayout, ...]:
        """Variable-measure layouts: the configured ones, else the barcode module's defaults."""
        from appliance.barcode import DEFAULT_LAYOUTS, VariableMeasureLayout

        if not self.barcodes.variable_measure:
            return tuple(DEFAULT_LAYOUTS)
        return tuple(
            VariableMeasureLayout(
                prefix=v.prefix,
                kind=v.kind,
                item_digits=v.item_digits,
                value_digits=v.value_digits,
                value_decimals=v.value_decimals,
                price_check_digit=v.price_check_digit,
            )
            for v in self.barcodes.variable_measure
        )

    def _check(self, given: frozenset[str]) -> Iterator[tuple[str, str]]:
        exponent = self.currency.exponent
        for i, layout in enumerate(self.barcodes.variable_measure, 1):
            if layout.kind == "price" and layout.value_decimals > exponent:
                yield (
                    f"barcodes.variable_measure[{i}].value_decimals",
                    f"{layout.value_decimals} is more than {self.currency.code} has ({exponent})",
                )
        gift_class = self.tax.classes.get(self.stored_value.gift_card_tax_class)
        if "stored_value" in given and (gift_class is None or gift_class.rates):
            yield "stored_value.gift_card_tax_class", "must name a tax class without rates (gift cards are not taxed)"


# --------------------------------------------------------------------------- parsing


class _BadValueError(Exception):
    """A value failed validation (internal)."""


_BAD: Final = object()
_T = TypeVar("_T", bound=Table)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime):
        return "date-time"
    if isinstance(value, date):
        return "date"
    if isinstance(value, time):
        return "time"
    return type(value).__name__


def toml_value(value: object) -> str:
    """A raw value (str, bool, int, Decimal, list) written as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _shown(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    shown = toml_value(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _bounds_text(spec: Spec) -> str:
    lo = "" if spec.lo is None else f"{spec.lo} {'<' if spec.lo_open else '<='} "
    hi = "" if spec.hi is None else f" {'<' if spec.hi_open else '<='} {spec.hi}"
    if lo and not hi:  # "x > 0" reads better than "0 < x"
        return f"x {'>' if spec.lo_open else '>='} {spec.lo}"
    return f"{lo}x{hi}"


def allowed_text(spec: Spec) -> str:
    """What a key accepts, in words (used in errors and the reference)."""
    if spec.allowed is not None:
        return spec.allowed
    if spec.choices:
        return ", ".join(f'"{c}"' for c in spec.choices)
    if spec.lo is not None or spec.hi is not None:
        return _bounds_text(spec)
    if spec.pattern is not None:
        return f"matches `{spec.pattern}`"
    if spec.kind == "str" and spec.nonempty:
        return "non-empty"
    return ""


@dataclass(frozen=True)
class _Where:
    dotted: str  # "ui" or "tax.classes.food.exemptions[1]"
    label: str  # "[ui]" or "[[tax.classes.food.exemptions]] #1"

    def key(self, key: str) -> str:
        return f"{self.dotted}.{key}" if self.dotted else key


class _Parser:
    """Walks the schema and raw TOML data together, collecting every problem."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.currency: Currency | None = None

    def table(self, cls: type[_T], raw: Mapping[str, Any], where: _Where) -> _T | None:
        keys = {key: (f, spec) for key, f, spec in schema_fields(cls)}
        for key, value in raw.items():
            if key not in keys:
                self._unknown(key, value, keys, where)
        values: dict[str, Any] = {}
        ok = True
        for key, (f, spec) in keys.items():
            if key in raw:
                value = self.value(spec, raw[key], where.key(key))
            elif spec.default is REQUIRED:
                self.problems.append(f"missing key '{key}' in {where.label}")
                value = _BAD
            else:
                value = self.value(spec, spec.default, where.key(key))
            if value is _BAD:
                ok = False
            else:
                values[f.name] = value
        if not ok:
            return None
        obj = cls(**values)
        found = [(k, msg) for k, msg in obj._check(frozenset(raw))]
        self.problems.extend(f"{where.key(k)}: {msg}" for k, msg in found)
        if isinstance(obj, CurrencySection) and not found:
            self.currency = Currency.of(obj.code)
        return obj

    def _unknown(self, key: str, value: object, keys: Mapping[str, Any], where: _Where) -> None:
        if where.dotted:
            hint = _hint(key, list(keys))
            if not hint:
                hint = " (known keys: " + ", ".join(keys) + ")"
            self.problems.append(f"unknown key '{key}' in {where.label}{hint}")
        elif isinstance(value, Mapping):
            self.problems.append(f"unknown section [{key}]{_hint(key, list(keys), '[{}]')}")
        else:
            homes = [name for name, (_, spec) in keys.items() if spec.table and _has_key(spec.table, key)]
            hint = f"; did you mean to put it under [{homes[0]}]?" if homes else ""
            self.problems.append(f"unknown top-level key '{key}'{hint}")

    def value(self, spec: Spec, raw: object, dotted: str) -> Any:
        try:
            if spec.kind in ("table", "map", "array"):
                return self._nested(spec, raw, dotted)
            if spec.kind == "list":
                return self._list(spec, raw)
            return self._scalar(spec, raw)
        except _BadValueError as exc:
            self.problems.append(f"{dotted}: {exc}")
            return _BAD

    def _nested(self, spec: Spec, raw: object, dotted: str) -> Any:
        table = spec.table
        assert table is not None
        if spec.kind == "table":
            if not isinstance(raw, Mapping):
                raise _BadValueError(f"expected a table [{dotted}], got {_type_name(raw)} {_shown(raw)}")
            result = self.table(table, raw, _Where(dotted, f"[{dotted}]"))
            return _BAD if result is None else result
        if spec.kind == "map":
            if not isinstance(raw, Mapping):
                raise _BadValueError(
                    f"expected tables [{dotted}.<{spec.key_name}>], got {_type_name(raw)} {_shown(raw)}"
                )
            entries: dict[str, Any] = {}
            for code, item in raw.items():
                if spec.pattern and not re.fullmatch(spec.pattern, code):
                    self.problems.append(f"{dotted}: {spec.key_name} '{code}' is not allowed ({allowed_text(spec)})")
                    entries[code] = None
                elif not isinstance(item, Mapping):
                    self.problems.append(f"{dotted}.{code}: expected a table, got {_type_name(item)} {_shown(item)}")
                    entries[code] = None
                else:
                    entries[code] = self.table(table, item, _Where(f"{dotted}.{code}", f"[{dotted}.{code}]"))
            if any(v is None for v in entries.values()):
                return _BAD
            return MappingProxyType(entries)
        if not isinstance(raw, list):
            raise _BadValueError(f"expected an array of tables [[{dotted}]], got {_type_name(raw)} {_shown(raw)}")
        items: list[Any] = []
        for i, item in enumerate(raw, 1):
            if not isinstance(item, Mapping):
                self.problems.append(f"{dotted}[{i}]: expected a table, got {_type_name(item)} {_shown(item)}")
                items.append(None)
            else:
                items.append(self.table(table, item, _Where(f"{dotted}[{i}]", f"[[{dotted}]] #{i}")))
        return _BAD if any(v is None for v in items) else tuple(items)

    def _list(self, spec: Spec, raw: object) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
            raise _BadValueError(f"expected an array of strings, got {_type_name(raw)} {_shown(raw)}")
        if spec.nonempty and not raw:
            raise _BadValueError(f"must not be empty ({allowed_text(spec)})")
        for item in raw:
            self._string(spec, item)
        if spec.unique:
            dupes = sorted({v for v in raw if raw.count(v) > 1})
            if dupes:
                raise _BadValueError(f"{toml_value(dupes[0])} is listed twice")
        return tuple(raw)

    def _string(self, spec: Spec, value: str) -> str:
        if spec.nonempty and spec.kind == "str" and not value:
            raise _BadValueError("must not be empty")
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            raise _BadValueError(f"{toml_value(value)} is not allowed ({allowed_text(spec)})")
        if spec.check is not None:
            problem = spec.check(value)
            if problem is not None:
                raise _BadValueError(f"{toml_value(value)} {problem}")
        return value

    def _scalar(self, spec: Spec, raw: object) -> Any:
        kind = spec.kind
        if kind == "bool":
            if not isinstance(raw, bool):
                raise _BadValueError(f"expected true or false, got {_type_name(raw)} {_shown(raw)}")
            return raw
        if kind in ("str", "choice"):
            if not isinstance(raw, str):
                raise _BadValueError(f"expected a string, got {_type_name(raw)} {_shown(raw)}")
            if kind == "choice" and raw not in spec.choices:
                hint = _hint(raw, spec.choices, '"{}"')
                raise _BadValueError(f"{toml_value(raw)} is not one of {allowed_text(spec)}{hint}")
            return self._string(spec, raw)
        if kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise _BadValueError(f"expected an integer, got {_type_name(raw)} {_shown(raw)}")
            self._bounds(spec, raw)
            return raw
        number = self._decimal(raw, 'an amount such as "10.00"' if kind == "money" else "a number")
        self._bounds(spec, number)
        if kind == "decimal":
            return number
        assert kind == "money", kind
        if self.currency is None:  # [currency] is invalid and already reported
            return _BAD
        try:
            return self.currency.to_minor(str(number))
        except InputError:
            raise _BadValueError(
                f"{number} has more decimals than {self.currency.code} allows ({self.currency.exponent})"
            ) from None

    @staticmethod
    def _decimal(raw: object, expected: str) -> Decimal:
        if isinstance(raw, Decimal):
            number = raw
        elif isinstance(raw, int) and not isinstance(raw, bool):
            number = Decimal(raw)
        elif isinstance(raw, str):
            try:
                number = Decimal(raw.strip())
            except InvalidOperation:
                raise _BadValueError(f"expected {expected}, got string {_shown(raw)}") from None
        else:
            raise _BadValueError(f"expected {expected}, got {_type_name(raw)} {_shown(raw)}")
        if not number.is_finite():
            raise _BadValueError(f"{_shown(raw)} is not a finite number")
        return number

    @staticmethod
    def _bounds(spec: Spec, value: int | Decimal) -> None:
        lo, hi = spec.lo, spec.hi
        too_low = lo is not None and (value <= lo if spec.lo_open else value < lo)
        too_high = hi is not None and (value >= hi if spec.hi_open else value > hi)
        if too_low or too_high:
            raise _BadValueError(f"{value} is out of range ({_bounds_text(spec)})")


def _has_key(table: type[Table], key: str) -> bool:
    return any(k == key for k, _, _ in schema_fields(table))


def _apply_env(config: Config, environ: Mapping[str, str], source: str) -> Config:
    value = environ.get(ENV_DEVICES, "").strip()
    if not value:
        return config
    if value.lower() != "sim":
        raise ConfigError(f"{source}: {ENV_DEVICES}={value!r} is not allowed; only 'sim' (or unset)")
    if config.devices.mode != "sim":
        logger.info("%s=sim overrides devices.mode=%s", ENV_DEVICES, config.devices.mode)
        config = dataclasses.replace(config, devices=dataclasses.replace(config.devices, mode="sim"))
    return config


def parse_config(text: str, source: str = "<string>", *, environ: Mapping[str, str] | None = None) -> Config:
    """Parse and validate TOML text; ``source`` names it in errors.

    ``environ`` (default: ``os.environ``) supplies the ``TILLBOX_DEVICES`` override.
    Raises :class:`ConfigError` (an :class:`InvalidConfigError` listing every problem for bad values).
    """
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    parser = _Parser()
    config = parser.table(Config, raw, _Where("", "the top level"))
    if parser.problems or config is None:
        raise InvalidConfigError(source, parser.problems or ["invalid configuration"])
    if not config.sync.client_id:
        client_id = f"tillbox-{config.store.id}-{config.store.device_id}"
        config = dataclasses.replace(config, sync=dataclasses.replace(config.sync, client_id=client_id))
    return _apply_env(config, os.environ if environ is None else environ, source)


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration file at ``path``; ``None`` gives the defaults (demo mode).

    The ``TILLBOX_DEVICES`` override applies in both cases.
    """
    if path is None:
        return parse_config("", source="<defaults>", environ=environ)
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return parse_config(content, source=str(path), environ=environ)


def config_to_raw(config: Config) -> dict[str, Any]:
    """The configuration as raw TOML data: :func:`merge_config` of no values gives an equal Config."""
    return _raw_table(config, config.currency)


def _raw_table(obj: Table, currency: Currency) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, f, spec in schema_fields(type(obj)):
        value = getattr(obj, f.name)
        if spec.kind == "table":
            raw[key] = _raw_table(value, currency)
        elif spec.kind == "map":
            raw[key] = {code: _raw_table(v, currency) for code, v in value.items()}
        elif spec.kind == "array":
            raw[key] = [_raw_table(v, currency) for v in value]
        elif spec.kind == "list":
            raw[key] = list(value)
        elif spec.kind == "money":
            raw[key] = currency.to_decimal(value)
        else:
            raw[key] = value
    return raw


def merge_config(
    config: Config,
    values: Mapping[str, Any],
    *,
    source: str = "merged config",
    environ: Mapping[str, str] | None = None,
) -> Config:
    """``config`` with raw values by dotted key (``sync.keepalive``) laid over it, validated as a whole.

    The result passes the same checks as a file would; raises :class:`InvalidConfigError`
    listing every problem. ``environ`` (default ``os.environ``) applies ``TILLBOX_DEVICES`` again.
    """
    raw = config_to_raw(config)
    problems: list[str] = []
    for dotted, value in values.items():
        *path, leaf = dotted.split(".")
        node: Any = raw
        for part in path:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            problems.append(f"{dotted}: not a key of a table")
            continue
        node[leaf] = value
    parser = _Parser()
    merged = parser.table(Config, raw, _Where("", "the top level")) if not problems else None
    if problems or parser.problems or merged is None:
        raise InvalidConfigError(source, problems or parser.problems or ["invalid configuration"])
    return _apply_env(merged, os.environ if environ is None else environ, source)


# --------------------------------------------------------------------------- reference document


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type_text(spec: Spec) -> str:
    return {
        "str": "string",
        "choice": "string",
        "int": "integer",
        "bool": "boolean",
        "decimal": "decimal",
        "money": "money",
        "list": "array of strings",
    }[spec.kind]


def _default_text(spec: Spec) -> str:
    if spec.default_doc is not None:
        return spec.default_doc
    if spec.default is REQUIRED:
        return "required"
    return f"`{toml_value(spec.default)}`"


def _toml_tables(prefix: str, raw: Mapping[str, Any]) -> list[str]:
    """Nested raw mappings as TOML ``[prefix.key]`` tables."""
    lines: list[str] = []
    for key, value in raw.items():
        assert isinstance(value, Mapping)
        if lines:
            lines.append("")
        lines.append(f"[{prefix}.{key}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in value.items())
    return lines


def _render_table(
    out: list[str],
    table: type[Table],
    dotted: str,
    heading: str,
    level: int,
    doc: str,
    extra: Sequence[str] = (),
) -> None:
    out += [f"{'#' * level} `{heading}`", "", doc, ""]
    keys = list(schema_fields(table))
    scalars = [(k, s) for k, _, s in keys if s.kind not in ("table", "map", "array")]
    if scalars:
        out += ["| Key | Type | Default | Allowed | Description |", "| --- | --- | --- | --- | --- |"]
        for key, spec in scalars:
            allowed = allowed_text(spec)
            out.append(
                f"| `{key}` | {_type_text(spec)} | {_cell(_default_text(spec))} | "
                f"{_cell(allowed)} | {_cell(spec.doc)} |"
            )
        out.append("")
    out.extend(extra)
    for key, _, spec in keys:
        sub = spec.table
        if sub is None:
            continue
        if spec.kind == "table":
            _render_table(out, sub, f"{dotted}.{key}", f"[{dotted}.{key}]", level + 1, spec.doc)
        elif spec.kind == "map":
            name = f"{dotted}.{key}.<{spec.key_name}>"
            doc = f"{spec.doc} Each `<{spec.key_name}>`: {allowed_text(spec)}."
            default = ["Default:", "", "```toml", *_toml_tables(f"{dotted}.{key}", spec.default), "```", ""]
            _render_table(out, sub, name, f"[{name}]", level + 1, doc, default if spec.default else ())
        else:
            name = f"{dotted}.{key}"
            _render_table(out, sub, name, f"[[{name}]]", level + 1, spec.doc)


_INTRO = f"""\
# Configuration reference

<!-- Generated from appliance/config.py by
     `python -m appliance.config --reference > docs/config-reference.md`. Do not edit. -->

tillbox reads one TOML file with a section per concern (see `docs/tillbox.example.toml`).
Every key is optional unless marked *required*; without a file the defaults below apply (demo mode).

- Unknown sections and keys are errors, with a suggestion for likely typos.
- Numbers are read as exact decimals, never binary floats.
- **decimal** keys take a TOML number (`7.5`) or a string (`"7.5"`).
- **money** keys take an amount in major units of `[currency].code`, as a string (`"110.00"`)
  or number, with no more decimals than the currency has; they are stored as integer minor units.
- Environment: `{ENV_DEVICES}=sim` forces `devices.mode = "sim"` whatever the file says;
  any other non-empty value is an error.
- Check a file with `python -m appliance.config --check PATH`.
"""


def render_reference() -> str:
    """The Markdown reference of every section and key, generated from the schema."""
    out = [_INTRO]
    for key, _, spec in schema_fields(Config):
        assert spec.table is not None
        _render_table(out, spec.table, key, f"[{key}]", 2, spec.doc)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``--reference`` prints the reference; ``--check PATH`` validates a file. Returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--reference"]:
        sys.stdout.write(render_reference())
        return 0
    if len(args) == 2 and args[0] == "--check":
        try:
            load_config(Path(args[1]))
        except InvalidConfigError as exc:
            sys.stderr.write("".join(f"{exc.source}: {p}\n" for p in exc.problems))
            return 1
        except ConfigError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        sys.stdout.write(f"{args[1]}: ok\n")
        return 0
    sys.stderr.write("usage: python -m appliance.config (--reference | --check PATH)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
