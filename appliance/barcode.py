"""Turn what a barcode scanner sends into a :class:`Scan`.

GS1 work (check digits, Application Identifiers, Digital Link URIs, symbology
identifiers, UPC-E expansion) is done by the ``biip`` library; this module adds
the retail rules on top: which key the catalog uses for an item, how
variable-measure (price/weight-embedded) labels are read, and expiry checks.

Dispatch, after stripping CR/LF and an optional AIM symbology identifier (``]E0``):

* GS1 symbologies (``]C1`` GS1-128, ``]e0`` DataBar, ``]d2``, ``]Q3``, ``]J1``) are GS1
  element strings, or a Digital Link URI when the data starts with ``http``.
* Without a GS1 symbology: an ``http(s)://`` URI must be a GS1 Digital Link; data holding
  the FNC1 separator (ASCII GS), HRI text ``(01)...``, or starting with AI ``01``/``02``
  and a valid GTIN is GS1 data; 8/12/13/14 digits are a GTIN (or an RCN read through a
  :class:`VariableMeasureLayout`); an 8-digit code starting with ``0`` that is a valid
  UPC-E is expanded to its UPC-A; anything else is an internal code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from biip import BiipException
from biip.checksums import gs1_price_weight_check_digit
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from biip.gs1_element_strings import GS1ElementString, GS1ElementStrings
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin
from biip.symbology import GS1Symbology, SymbologyIdentifier
from biip.upc import Upc, UpcFormat

from appliance.errors import BarcodeError, ConfigError, InputError
from appliance.money import Currency

__all__ = [
    "DEFAULT_LAYOUTS",
    "MAX_CODE_LENGTH",
    "MAX_SCAN_LENGTH",
    "VM_KEY_PREFIX",
    "Scan",
    "ScanKind",
    "VariableMeasureLayout",
    "catalog_key",
    "normalize_gtin",
    "parse_scan",
]

#: Longest internal (non-GS1) code accepted, in characters.
MAX_CODE_LENGTH = 64
#: Longest scan looked at at all; a GS1 DataMatrix holds at most about 2,300 characters.
MAX_SCAN_LENGTH = 4096
#: Catalog keys of variable-measure items start with this.
VM_KEY_PREFIX = "VM:"

_GTIN_LENGTHS = frozenset({8, 12, 13, 14})
_VM_PREFIXES = frozenset({"02", *(f"2{d}" for d in range(10))})
_GS1_DATA_SYMBOLOGIES = frozenset(
    {
        GS1Symbology.GS1_128,
        GS1Symbology.GS1_DATABAR,
        GS1Symbology.GS1_DATAMATRIX,
        GS1Symbology.GS1_QR_CODE,
        GS1Symbology.GS1_DOTCODE,
    }
)
_EAN_SYMBOLOGIES = frozenset(
    {GS1Symbology.EAN_13, GS1Symbology.EAN_13_WITH_ADD_ON, GS1Symbology.EAN_8, GS1Symbology.ITF_14}
)
# Exceptions biip (and the stdlib parsers under it) raise on malformed input.
_BIIP_ERRORS = (BiipException, ValueError, LookupError)
_DIGITS = re.compile(r"[0-9]+")
_HRI_START = re.compile(r"\([0-9]{2,4}\)")


class ScanKind(StrEnum):
    """What kind of code a scan turned out to be."""

    GTIN = "gtin"
    VARIABLE_MEASURE = "variable_measure"
    GS1 = "gs1"
    INTERNAL = "internal"


@dataclass(frozen=True)
class VariableMeasureLayout:
    """How one restricted-circulation prefix embeds a price or weight in a GTIN-13.

    Digits, left to right: ``prefix`` (2), item reference (``item_digits``), an optional
    price/weight check digit, the value (``value_digits``), the GTIN check digit; 13 in all.
    A UPC-A with number system 2 is the GTIN-13 ``02...``.
    """

    prefix: str
    kind: Literal["price", "weight"]
    item_digits: int
    value_digits: int
    value_decimals: int = 0
    price_check_digit: bool = False

    def __post_init__(self) -> None:
        """Reject layouts that cannot describe a GTIN-13."""
        if self.prefix not in _VM_PREFIXES:
            raise ConfigError(f"variable-measure prefix {self.prefix!r} is not '02' or '20'..'29'")
        if self.kind not in ("price", "weight"):
            raise ConfigError(f"variable-measure kind {self.kind!r} is not 'price' or 'weight'")
        for name in ("item_digits", "value_digits", "value_decimals"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"variable-measure {name} must be a non-negative integer, got {value!r}")
        if self.item_digits < 1 or self.value_digits < 1:
            raise ConfigError(f"variable-measure layout {self.prefix}: item and value need at least one digit")
        if self.kind == "weight" and self.value_decimals > self.value_digits:
            raise ConfigError(
                f"variable-measure layout {self.prefix}: {self.value_decimals} decimals "
                f"in a {self.value_digits}-digit value"
            )
        if self.price_check_digit and self.value_digits not in (4, 5):
            raise ConfigError(f"variable-measure layout {self.prefix}: a price check digit needs a 4- or 5-digit value")
        total = len(self.prefix) + self.item_digits + int(self.price_check_digit) + self.value_digits + 1
        if total != 13:
            raise ConfigError(f"variable-measure layout {self.prefix} adds up to {total} digits, not 13")

    @property
    def value_start(self) -> int:
        """Index of the first value digit in the GTIN-13."""
        return len(self.prefix) + self.item_digits + int(self.price_check_digit)


def _price_layout(prefix: str) -> VariableMeasureLayout:
    return VariableMeasureLayout(prefix, "price", item_digits=5, value_digits=5)


def _weight_layout(prefix: str) -> VariableMeasureLayout:
    return VariableMeasureLayout(prefix, "weight", item_digits=5, value_digits=5, value_decimals=3)


#: North-American style defaults, no price check digit (``PP IIIII VVVVV C``):
#: ``02`` (UPC-A ``2-IIIII-PPPPP-C``), ``20``, ``22``-``27`` and ``29`` embed a price in
#: minor units; ``21`` and ``28`` embed a net weight in grams (3 decimals of a kg).
#: Shops elsewhere configure their GS1 member organisation's layouts instead.
DEFAULT_LAYOUTS: tuple[VariableMeasureLayout, ...] = tuple(
    _weight_layout(p) if p in ("21", "28") else _price_layout(p)
    for p in ("02", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29")
)


@dataclass(frozen=True)
class Scan:
    """One parsed scan. ``lookup_key`` is what to look up in the catalog."""

    raw: str
    kind: ScanKind
    lookup_key: str
    gtin: str | None = None
    symbology: str | None = None
    embedded_price: int | None = None
    weight_kg: Decimal | None = None
    expiry: date | None = None
    best_before: date | None = None
    batch: str | None = None
    serial: str | None = None
    expired: bool = False
    count: int | None = None


def parse_scan(
    raw: str,
    *,
    today: date,
    layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS,
    currency: Currency | None = None,
) -> Scan:
    """Parse scanner output; raise :class:`BarcodeError` for anything unusable.

    ``currency`` lets a GS1 amount payable (AI 392n) fill ``embedded_price``; without it
    that AI is ignored. ``expired`` is ``expiry < today``. GS1 two-digit years are placed
    in a century by biip following GS1 General Specifications 7.12.
    """
    return _Parser(layouts, currency, strict=True).parse(raw, today)


def catalog_key(code: str, layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS) -> str:
    """Key the catalog stores for a barcode; equals ``parse_scan(code).lookup_key``.

    A variable-measure code maps to ``VM:<prefix>:<item reference>``; its value and check
    digits are not checked here, so a catalog may store a template such as
    ``2012345000000``. Every other code is validated as a scan would be.
    """
    return _Parser(layouts, None, strict=False).parse(code, None).lookup_key


def normalize_gtin(code: str) -> str:
    """Return a GTIN-8/12/13/14 as a zero-padded GTIN-14, checking its check digit."""
    text = code.strip()
    if len(text) not in _GTIN_LENGTHS or not _DIGITS.fullmatch(text):
        raise BarcodeError(f"{_show(text)} is not a GTIN (8, 12, 13 or 14 digits)")
    try:
        gtin = Gtin.parse(text)
    except _BIIP_ERRORS:
        raise BarcodeError(f"bad check digit in {text}") from None
    return gtin.as_gtin_14()


def _show(text: str, limit: int = 40) -> str:
    """Quote text for a one-line message, shortened."""
    return repr(text[:limit] + "..." if len(text) > limit else text)


def _as_gtin_13(digits: str) -> str | None:
    """The GTIN-13 spelling of a 12/13/14-digit code, if it has one."""
    if len(digits) == 13:
        return digits
    if len(digits) == 12:
        return "0" + digits
    if len(digits) == 14 and digits.startswith("0"):
        return digits[1:]
    return None


def _layout_map(layouts: Sequence[VariableMeasureLayout]) -> dict[str, VariableMeasureLayout]:
    found: dict[str, VariableMeasureLayout] = {}
    for layout in layouts:
        if layout.prefix in found:
            raise ConfigError(f"two variable-measure layouts for prefix {layout.prefix}")
        found[layout.prefix] = layout
    return found


@dataclass(frozen=True)
class _Measure:
    """What a variable-measure code carries."""

    key: str
    price: int | None
    weight_kg: Decimal | None


@dataclass(frozen=True)
class _Fields:
    """Everything a scan yields except ``raw``, ``symbology`` and ``expired``."""

    kind: ScanKind
    lookup_key: str
    gtin: str | None = None
    embedded_price: int | None = None
    weight_kg: Decimal | None = None
    expiry: date | None = None
    best_before: date | None = None
    batch: str | None = None
    serial: str | None = None
    count: int | None = None


class _Parser:
    """One parse with its settings; ``strict=False`` skips variable-measure check digits."""

    def __init__(
        self,
        layouts: Sequence[VariableMeasureLayout],
        currency: Currency | None,
        *,
        strict: bool,
    ) -> None:
        self.layouts: Mapping[str, VariableMeasureLayout] = _layout_map(layouts)
        self.currency = currency
        self.strict = strict

    def parse(self, raw: str, today: date | None) -> Scan:
        raw = raw.strip("\r\n")
        if len(raw) > MAX_SCAN_LENGTH:
            raise BarcodeError(f"scan too long ({len(raw)} characters)")
        data = raw.strip()
        if not data:
            raise BarcodeError("empty scan")
        symbology: SymbologyIdentifier | None = None
        if data.startswith("]"):
            symbology, data = self._split_symbology(data)
        fields = self._dispatch(data, symbology.gs1_symbology if symbology else None)
        return Scan(
            raw=raw,
            kind=fields.kind,
            lookup_key=fields.lookup_key,
            gtin=fields.gtin,
            symbology=symbology.value if symbology else None,
            embedded_price=fields.embedded_price,
            weight_kg=fields.weight_kg,
            expiry=fields.expiry,
            best_before=fields.best_before,
            batch=fields.batch,
            serial=fields.serial,
            expired=today is not None and fields.expiry is not None and fields.expiry < today,
            count=fields.count,
        )

    @staticmethod
    def _split_symbology(data: str) -> tuple[SymbologyIdentifier, str]:
        try:
            symbology = SymbologyIdentifier.extract(data)
        except _BIIP_ERRORS:
            raise BarcodeError(f"unknown symbology identifier in {_show(data)}") from None
        if not symbology.modifiers or not symbology.value.isascii():
            raise BarcodeError(f"incomplete symbology identifier in {_show(data)}")
        rest = data[len(symbology.value) :].strip()
        if not rest:
            raise BarcodeError(f"no data after symbology identifier {symbology.value}")
        return symbology, rest

    def _dispatch(self, data: str, symbology: GS1Symbology | None) -> _Fields:
        if symbology in _GS1_DATA_SYMBOLOGIES:
            if data[:4].lower() == "http":
                return self._digital_link(data)
            return self._gs1_message(data, hri=False)
        if symbology in _EAN_SYMBOLOGIES:
            if symbology == GS1Symbology.EAN_13_WITH_ADD_ON and len(data) in (15, 18):
                data = data[:13]  # the 2- or 5-digit add-on (issue number, price) is not the item
            if not _DIGITS.fullmatch(data) or len(data) not in _GTIN_LENGTHS:
                raise BarcodeError(f"EAN/UPC scan {_show(data)} is not 8, 12, 13 or 14 digits")
            return self._numeric(data, upc_e=symbology != GS1Symbology.EAN_8)
        return self._plain(data)

    def _plain(self, data: str) -> _Fields:
        """Data without a GS1 symbology identifier: work out what it is."""
        if data[:8].lower().startswith(("http://", "https://")):
            return self._digital_link(data)
        if "\x1d" in data:
            return self._gs1_message(data, hri=False)
        if _HRI_START.match(data):
            return self._gs1_message(data, hri=True)
        if _looks_like_gs1(data):
            return self._gs1_message(data, hri=False)
        if _DIGITS.fullmatch(data) and len(data) in _GTIN_LENGTHS:
            return self._numeric(data, upc_e=True)
        return self._internal(data)

    def _numeric(self, digits: str, *, upc_e: bool) -> _Fields:
        """A code of GTIN length: a GTIN, an expanded UPC-E or a variable-measure RCN."""
        if upc_e and len(digits) == 8 and digits.startswith("0"):
            upc = _parse_upc_e(digits)
            if upc is not None:
                gtin14 = upc.as_gtin_14()
                return _Fields(ScanKind.GTIN, gtin14, gtin=gtin14)
        measure = self._measure(digits)
        if measure is not None:
            return _Fields(
                ScanKind.VARIABLE_MEASURE,
                measure.key,
                embedded_price=measure.price,
                weight_kg=measure.weight_kg,
            )
        gtin14 = normalize_gtin(digits)
        return _Fields(ScanKind.GTIN, gtin14, gtin=gtin14)

    def _measure(self, digits: str) -> _Measure | None:
        """Read a variable-measure code, or ``None`` when no layout matches its prefix."""
        gtin13 = _as_gtin_13(digits)
        layout = self.layouts.get(gtin13[:2]) if gtin13 else None
        if gtin13 is None or layout is None:
            return None
        item = gtin13[2 : 2 + layout.item_digits]
        key = f"{VM_KEY_PREFIX}{layout.prefix}:{item}"
        if not self.strict:
            return _Measure(key, None, None)
        normalize_gtin(digits)  # the GTIN check digit must hold on a scanned label
        value = gtin13[layout.value_start : layout.value_start + layout.value_digits]
        if layout.price_check_digit:
            expected = gs1_price_weight_check_digit(value)
            if int(gtin13[layout.value_start - 1]) != expected:
                raise BarcodeError(f"bad {layout.kind} check digit in {digits}")
        if layout.kind == "price":
            return _Measure(key, int(value), None)
        return _Measure(key, None, Decimal(value).scaleb(-layout.value_decimals))

    def _gtin_key(self, gtin14: str) -> tuple[str, _Measure | None]:
        measure = self._measure(gtin14)
        return (measure.key, measure) if measure else (gtin14, None)

    def _internal(self, text: str) -> _Fields:
        if len(text) > MAX_CODE_LENGTH:
            raise BarcodeError(f"code {_show(text)} is longer than {MAX_CODE_LENGTH} characters")
        if not text.isprintable():
            raise BarcodeError(f"code {_show(text)} contains control or unprintable characters")
        return _Fields(ScanKind.INTERNAL, text)

    def _digital_link(self, uri: str) -> _Fields:
        if not uri.isascii():
            raise BarcodeError(f"GS1 Digital Link URI {_show(uri)} contains non-ASCII characters")
        try:
            link = GS1DigitalLinkURI.parse(uri)
        except _BIIP_ERRORS as exc:
            raise BarcodeError(f"not a GS1 Digital Link URI: {_show(uri)}") from exc
        return self._from_elements(link.element_strings, uri)

    def _gs1_message(self, data: str, *, hri: bool) -> _Fields:
        if not data.isascii():
            raise BarcodeError(f"GS1 data {_show(data)} contains non-ASCII characters")
        try:
            message = GS1Message.parse_hri(data) if hri else GS1Message.parse(data)
        except _BIIP_ERRORS as exc:
            raise BarcodeError(f"malformed GS1 data {_show(data)}") from exc
        return self._from_elements(message.element_strings, data)

    def _from_elements(self, elements: GS1ElementStrings, data: str) -> _Fields:
        """Pick the retail-relevant AIs out of parsed GS1 element strings."""
        by_ai: dict[str, GS1ElementString] = {}
        for element in elements:
            by_ai.setdefault(element.ai.ai, element)
        gtin_element = by_ai.get("01") or by_ai.get("02")
        if gtin_element is None:
            raise BarcodeError(f"GS1 data {_show(data)} carries no GTIN (AI 01 or 02)")
        gtin14 = gtin_element.gtin.as_gtin_14() if gtin_element.gtin else None
        if gtin14 is None or not _DIGITS.fullmatch(gtin14):
            raise BarcodeError(f"bad check digit in GTIN {gtin_element.value}")
        key, measure = self._gtin_key(gtin14)
        weight = next((e.decimal for ai, e in by_ai.items() if ai.startswith("310")), None)
        if weight is None and measure is not None:
            weight = measure.weight_kg
        price = self._amount(by_ai)
        if price is None and measure is not None:
            price = measure.price
        return _Fields(
            ScanKind.GS1,
            key,
            gtin=None if measure else gtin14,
            embedded_price=price,
            weight_kg=weight,
            expiry=_date(by_ai, "17"),
            best_before=_date(by_ai, "15"),
            batch=by_ai["10"].value if "10" in by_ai else None,
            serial=by_ai["21"].value if "21" in by_ai else None,
            count=_count(by_ai),
        )

    def _amount(self, by_ai: Mapping[str, GS1ElementString]) -> int | None:
        """AI 392n (amount payable, local currency) in minor units, if a currency is known."""
        element = next((e for ai, e in by_ai.items() if ai.startswith("392")), None)
        if element is None or element.decimal is None or self.currency is None:
            return None
        try:
            return self.currency.to_minor(element.decimal)
        except InputError as exc:
            raise BarcodeError(f"amount {element.value} does not fit {self.currency.code}") from exc


def _looks_like_gs1(data: str) -> bool:
    """Unprefixed data that starts with AI 01/02 and a valid GTIN-14 is GS1 data."""
    head = data[:16]
    if len(head) != 16 or head[:2] not in ("01", "02") or not _DIGITS.fullmatch(head):
        return False
    try:
        Gtin.parse(head[2:])
    except _BIIP_ERRORS:
        return False
    return True


def _parse_upc_e(digits: str) -> Upc | None:
    try:
        upc = Upc.parse(digits)
    except _BIIP_ERRORS:
        return None
    return upc if upc.format == UpcFormat.UPC_E else None


def _date(by_ai: Mapping[str, GS1ElementString], ai: str) -> date | None:
    element = by_ai.get(ai)
    return element.date if element else None


def _count(by_ai: Mapping[str, GS1ElementString]) -> int | None:
    element = by_ai.get("30") or by_ai.get("37")
    if element is None:
        return None
    if not _DIGITS.fullmatch(element.value):
        raise BarcodeError(f"GS1 count (AI {element.ai.ai}) {element.value!r} is not a number")
    return int(element.value)
