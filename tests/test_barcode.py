"""Tests for appliance.barcode: GTINs, variable-measure labels, GS1 data and junk."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.barcode import (
    DEFAULT_LAYOUTS,
    MAX_CODE_LENGTH,
    Scan,
    ScanKind,
    VariableMeasureLayout,
    catalog_key,
    normalize_gtin,
    parse_scan,
)
from appliance.errors import BarcodeError, ConfigError, InputError
from appliance.money import Currency

TODAY = date(2026, 6, 15)
# 4006381333931 in fullwidth digits: str.isdecimal() accepts these, a GTIN must not.
FULLWIDTH_EAN = "".join(chr(0xFF10 + int(d)) for d in "4006381333931")
GS = "\x1d"

# Layouts seen outside North America, with a price/weight check digit (GS1 GS 7.9.2-7.9.4).
UK_PRICE = VariableMeasureLayout("20", "price", item_digits=5, value_digits=4, price_check_digit=True)
DE_WEIGHT = VariableMeasureLayout(
    "28", "weight", item_digits=4, value_digits=5, value_decimals=3, price_check_digit=True
)


def scan(
    raw: str,
    layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS,
    currency: Currency | None = None,
) -> Scan:
    return parse_scan(raw, today=TODAY, layouts=layouts, currency=currency)


# --- check digits and GTIN normalisation -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "gtin14"),
    [
        ("96385074", "00000096385074"),  # GTIN-8, GS1 General Specifications example
        ("036000291452", "00036000291452"),  # UPC-A
        ("4006381333931", "04006381333931"),  # EAN-13
        ("5901234123457", "05901234123457"),  # EAN-13
        ("09506000134352", "09506000134352"),  # GTIN-14, GS1 Digital Link example
        ("10012345678902", "10012345678902"),  # GTIN-14 with indicator digit 1 (ITF-14)
        ("  4006381333931 ", "04006381333931"),
    ],
)
def test_normalize_gtin_valid(code: str, gtin14: str) -> None:
    assert normalize_gtin(code) == gtin14


@pytest.mark.parametrize(
    "code", ["96385075", "036000291453", "4006381333932", "5901234123450", "09506000134353", "10012345678901"]
)
def test_normalize_gtin_bad_check_digit(code: str) -> None:
    with pytest.raises(BarcodeError, match=rf"^bad check digit in {code}$"):
        normalize_gtin(code)


@pytest.mark.parametrize("code", ["", "1234567", "400638133393", "12345678901", "ABCDEFGH", FULLWIDTH_EAN])
def test_normalize_gtin_rejects_non_gtins(code: str) -> None:
    with pytest.raises(BarcodeError):
        normalize_gtin(code)


@given(st.text(alphabet="0123456789", min_size=12, max_size=12))
def test_exactly_one_check_digit_is_accepted(payload: str) -> None:
    accepted = []
    for digit in "0123456789":
        try:
            normalize_gtin(payload + digit)
        except BarcodeError:
            continue
        accepted.append(digit)
    assert len(accepted) == 1


@given(st.text(alphabet="0123456789", min_size=11, max_size=11).filter(lambda p: p[0] not in "2"))
def test_upc_a_and_its_ean_13_share_a_key(payload: str) -> None:
    for digit in "0123456789":
        upc_a = payload + digit
        try:
            key = catalog_key(upc_a)
        except BarcodeError:
            continue
        assert catalog_key("0" + upc_a) == key
        assert catalog_key("00" + upc_a) == key
        assert key == "00" + upc_a
        return
    pytest.fail("no check digit accepted")


# --- plain GTIN scans ------------------------------------------------------------------------------


def test_upc_a_and_ean_13_scans_look_up_the_same_key() -> None:
    upc, ean = scan("036000291452"), scan("0036000291452")
    assert upc.lookup_key == ean.lookup_key == catalog_key("036000291452") == "00036000291452"
    assert upc.kind is ean.kind is ScanKind.GTIN
    assert upc.gtin == "00036000291452"


def test_plain_ean_13_scan() -> None:
    result = scan("4006381333931\r\n")
    assert result.raw == "4006381333931"
    assert result.kind is ScanKind.GTIN
    assert result.lookup_key == result.gtin == "04006381333931"
    assert result.symbology is None
    assert result.embedded_price is None
    assert result.weight_kg is None
    assert result.expiry is None
    assert result.expired is False


def test_bad_check_digit_scan_is_an_error_not_an_internal_code() -> None:
    with pytest.raises(BarcodeError, match=r"^bad check digit in 4006381333932$"):
        scan("4006381333932")
    with pytest.raises(BarcodeError, match="bad check digit"):
        catalog_key("4006381333932")


@pytest.mark.parametrize(
    ("raw", "symbology", "key"),
    [
        ("]E04006381333931", "]E0", "04006381333931"),
        ("]E00036000291452", "]E0", "00036000291452"),
        ("]E496385074", "]E4", "00000096385074"),
        ("]I110012345678902", "]I1", "10012345678902"),
        ("]E3590123412345712", "]E3", "05901234123457"),  # EAN-13 with 2-digit add-on "12"
    ],
)
def test_aim_prefix_on_ean(raw: str, symbology: str, key: str) -> None:
    result = scan(raw)
    assert result.kind is ScanKind.GTIN
    assert result.symbology == symbology
    assert result.lookup_key == result.gtin == key
    assert result.raw == raw
    assert catalog_key(raw) == key


def test_aim_prefixed_ean_with_bad_check_digit() -> None:
    with pytest.raises(BarcodeError, match="bad check digit in 4006381333932"):
        scan("]E04006381333932")


def test_ean_symbology_with_letters_is_rejected() -> None:
    with pytest.raises(BarcodeError, match="EAN/UPC"):
        scan("]E0ABCDEFGHIJKLM")


def test_upc_e_is_expanded_to_its_upc_a() -> None:
    # UPC-E 0425261(4) expands to UPC-A 042100005264.
    result = scan("04252614")
    assert result.kind is ScanKind.GTIN
    assert result.lookup_key == catalog_key("042100005264") == "00042100005264"
    # An EAN-8 symbology identifier forces the EAN-8 reading, where the check digit fails.
    with pytest.raises(BarcodeError, match="bad check digit"):
        scan("]E404252614")


# --- variable-measure labels --------------------------------------------------------------------


def test_default_layouts_cover_all_geographic_rcn_prefixes() -> None:
    prefixes = [layout.prefix for layout in DEFAULT_LAYOUTS]
    assert sorted(prefixes) == ["02", *(f"2{d}" for d in range(10))]
    assert {layout.prefix for layout in DEFAULT_LAYOUTS if layout.kind == "weight"} == {"21", "28"}


def test_price_embedded_label_default_layout() -> None:
    result = scan("2012345001992")  # 20 12345 00199 2
    assert result.kind is ScanKind.VARIABLE_MEASURE
    assert result.lookup_key == "VM:20:12345"
    assert result.embedded_price == 199
    assert result.weight_kg is None
    assert result.gtin is None


def test_catalog_template_and_scanned_label_share_a_key() -> None:
    # The catalog's digits after the item reference do not matter, check digits included.
    assert catalog_key("2012345000007") == catalog_key("2012345001994") == scan("2012345001992").lookup_key


def test_upc_a_number_system_2_price_label() -> None:
    upc = scan("212345001998")  # UPC-A 2 12345 00199 8
    ean = scan("0212345001998")
    assert upc.lookup_key == ean.lookup_key == "VM:02:12345"
    assert upc.embedded_price == ean.embedded_price == 199


def test_weight_embedded_label_default_layout() -> None:
    result = scan("2154321012506")  # 21 54321 01250 6
    assert result.kind is ScanKind.VARIABLE_MEASURE
    assert result.lookup_key == "VM:21:54321"
    assert result.weight_kg == Decimal("1.250")
    assert result.embedded_price is None


def test_scanned_variable_measure_label_needs_a_valid_gtin_check_digit() -> None:
    with pytest.raises(BarcodeError, match="bad check digit in 2012345001994"):
        scan("2012345001994")


def test_price_label_with_4_digit_price_check_digit() -> None:
    # GS1 General Specifications 7.9.3 example: price 2875 has check digit 9.
    result = scan("2012345928756", layouts=[UK_PRICE])
    assert result.lookup_key == "VM:20:12345"
    assert result.embedded_price == 2875
    # Same label with price check digit 8 (and a recomputed, valid GTIN check digit).
    with pytest.raises(BarcodeError, match="bad price check digit in 2012345828759"):
        scan("2012345828759", layouts=[UK_PRICE])
    # The catalog side ignores the price check digit.
    assert catalog_key("2012345828759", [UK_PRICE]) == "VM:20:12345"


def test_weight_label_with_5_digit_check_digit() -> None:
    # GS1 General Specifications 7.9.4 example: value 14685 has check digit 6.
    result = scan("2812346146858", layouts=[DE_WEIGHT])
    assert result.lookup_key == "VM:28:1234"
    assert result.weight_kg == Decimal("14.685")
    with pytest.raises(BarcodeError, match="bad weight check digit"):
        scan("2812345146859", layouts=[DE_WEIGHT])


def test_prefix_without_a_layout_is_a_plain_gtin() -> None:
    result = scan("2012345001992", layouts=[DE_WEIGHT])
    assert result.kind is ScanKind.GTIN
    assert result.lookup_key == "02012345001992"


@given(item=st.text(alphabet="0123456789", min_size=5, max_size=5), price=st.integers(0, 99_999))
def test_any_default_price_label_round_trips(item: str, price: int) -> None:
    payload = f"20{item}{price:05d}"
    results = []
    for digit in "0123456789":
        try:
            results.append(scan(payload + digit))
        except BarcodeError:
            continue
    assert len(results) == 1
    assert results[0].embedded_price == price
    assert results[0].lookup_key == f"VM:20:{item}" == catalog_key(f"20{item}000000")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "20", "kind": "price", "item_digits": 5, "value_digits": 4}, "adds up to 12"),
        (
            {"prefix": "20", "kind": "price", "item_digits": 5, "value_digits": 5, "price_check_digit": True},
            "14",
        ),
        ({"prefix": "30", "kind": "price", "item_digits": 5, "value_digits": 5}, "prefix"),
        ({"prefix": "2", "kind": "price", "item_digits": 6, "value_digits": 5}, "prefix"),
        ({"prefix": "20", "kind": "count", "item_digits": 5, "value_digits": 5}, "kind"),
        (
            {"prefix": "20", "kind": "price", "item_digits": 4, "value_digits": 6, "price_check_digit": True},
            "4- or 5",
        ),
        (
            {"prefix": "21", "kind": "weight", "item_digits": 8, "value_digits": 2, "value_decimals": 3},
            "decimals",
        ),
        ({"prefix": "20", "kind": "price", "item_digits": 0, "value_digits": 10}, "at least one"),
        ({"prefix": "20", "kind": "price", "item_digits": -1, "value_digits": 11}, "non-negative"),
    ],
)
def test_bad_layout_is_a_config_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        VariableMeasureLayout(**kwargs)  # type: ignore[arg-type]


def test_duplicate_layout_prefix_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="two variable-measure layouts for prefix 20"):
        scan("4006381333931", layouts=[UK_PRICE, *DEFAULT_LAYOUTS])


# --- GS1 element strings ----------------------------------------------------------------------


def test_gs1_128_with_expiry_batch_and_weight() -> None:
    raw = f"]C10109506000134352172612311029AB{GS}3103001500"
    result = scan(raw)
    assert result.kind is ScanKind.GS1
    assert result.symbology == "]C1"
    assert result.gtin == result.lookup_key == "09506000134352"
    assert result.expiry == date(2026, 12, 31)
    assert result.batch == "29AB"
    assert result.weight_kg == Decimal("1.500")
    assert result.expired is False


@pytest.mark.parametrize(
    ("today", "expired"),
    [(date(2026, 12, 30), False), (date(2026, 12, 31), False), (date(2027, 1, 1), True)],
)
def test_expired_flag_compares_with_today(today: date, expired: bool) -> None:
    assert parse_scan("]C1010950600013435217261231", today=today).expired is expired


def test_expiry_day_00_means_last_day_of_month() -> None:
    assert scan("]C1010950600013435217280200").expiry == date(2028, 2, 29)


def test_gs1_without_symbology_identifier() -> None:
    result = scan(f"0109506000134352152701311012{GS}21SN-7{GS}3012\r")
    assert result.kind is ScanKind.GS1
    assert result.symbology is None
    assert result.lookup_key == "09506000134352"
    assert result.best_before == date(2027, 1, 31)
    assert result.expiry is None
    assert (result.batch, result.serial, result.count) == ("12", "SN-7", 12)


def test_gs1_hri_text() -> None:
    result = scan("(01)09506000134352(17)260131(10)ABC")
    assert result.kind is ScanKind.GS1
    assert result.expiry == date(2026, 1, 31)
    assert result.expired is True
    assert result.batch == "ABC"


def test_gs1_contained_gtin_with_count() -> None:
    result = scan(f"]C10204006381333931{GS}3724")
    assert result.lookup_key == "04006381333931"
    assert result.count == 24


def test_gs1_databar_amount_needs_a_currency() -> None:
    raw = "]e00109506000134352310300012539221299"
    assert scan(raw).embedded_price is None
    result = scan(raw, currency=Currency("EUR", 2))
    assert result.embedded_price == 1299
    assert result.weight_kg == Decimal("0.125")
    with pytest.raises(BarcodeError, match="JPY"):
        scan(raw, currency=Currency("JPY", 0))


def test_gs1_carrying_a_variable_measure_rcn() -> None:
    result = scan("]e00102012345001992")
    assert result.kind is ScanKind.GS1
    assert result.lookup_key == "VM:20:12345"
    assert result.embedded_price == 199


@pytest.mark.parametrize(
    "raw",
    [
        "]C1junk",
        "]C10109506000134353",  # bad GTIN check digit in AI 01
        "]C1010950600013435217261331",  # month 13
        "]C100106141412345678908",  # SSCC only, nothing to sell
        f"]C10109506000134352{GS}99",  # AI 99 needs data
        "]C10109506000134352Ä",
        "(01)09506000134352(17)2613",
        f"0109506000134352{GS}10",  # GS in unprefixed data means GS1
    ],
)
def test_unparseable_gs1_data_is_a_barcode_error(raw: str) -> None:
    with pytest.raises(BarcodeError):
        scan(raw)


# --- GS1 Digital Link ---------------------------------------------------------------------------


def test_digital_link_uri() -> None:
    result = scan("https://id.gs1.org/01/09506000134352/10/ABC?17=261231")
    assert result.kind is ScanKind.GS1
    assert result.lookup_key == result.gtin == "09506000134352"
    assert result.batch == "ABC"
    assert result.expiry == date(2026, 12, 31)


def test_digital_link_on_own_domain_in_plain_qr() -> None:
    result = scan("]Q1https://example.com/shop/01/09506000134352/21/123?3103=000750&17=260600")
    assert result.symbology == "]Q1"
    assert result.lookup_key == "09506000134352"
    assert result.serial == "123"
    assert result.weight_kg == Decimal("0.750")
    assert result.expiry == date(2026, 6, 30)


@pytest.mark.parametrize(
    "raw",
    [
        "https://example.com/menu",
        "https://id.gs1.org/01/09506000134353",  # bad check digit
        "https://id.gs1.org/01/09506000134352?17=261399",
        "http://[::1",
        "https://id.gs1.org/01/095060001343%D9%A4",
    ],
)
def test_bad_digital_link_is_a_barcode_error(raw: str) -> None:
    with pytest.raises(BarcodeError):
        scan(raw)


# --- internal codes and junk ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("ABC-123", "ABC-123"),
        ("  sku-42 \n", "sku-42"),
        ("]C0Sku 7", "Sku 7"),  # plain Code 128
        ("]A0BOLT-M6", "BOLT-M6"),  # Code 39
        ("12345", "12345"),
        ("Käse-12", "Käse-12"),
        ("X" * MAX_CODE_LENGTH, "X" * MAX_CODE_LENGTH),
    ],
)
def test_internal_codes(raw: str, key: str) -> None:
    result = scan(raw)
    assert result.kind is ScanKind.INTERNAL
    assert result.lookup_key == key == catalog_key(raw)
    assert result.gtin is None


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "\r\n",
        "   ",
        "\x00\x01\x02",
        "AB\x07C",
        "AB\tC",
        "X" * (MAX_CODE_LENGTH + 1),
        "9" * 100_000,
        "]",
        "]?1234",
        "]E0",
        "]E",
        "\udcff\udcfe",
        "ABC\u200bDEF",
    ],
)
def test_junk_is_a_barcode_error(raw: str) -> None:
    with pytest.raises(BarcodeError):
        scan(raw)
    with pytest.raises(BarcodeError):
        catalog_key(raw)


def test_barcode_error_is_an_input_error() -> None:
    assert issubclass(BarcodeError, InputError)


def test_error_messages_are_one_line() -> None:
    for raw in ("AB\nCD\x07", "]C1" + "9" * 500, "https://x/" + "\n" * 5):
        with pytest.raises(BarcodeError) as info:
            scan(raw)
        assert "\n" not in str(info.value)
        assert len(str(info.value)) < 200


_PIECES = st.sampled_from(
    [
        "]C1",
        "]e0",
        "]E0",
        "]Q1",
        "]d2",
        "01",
        "02",
        "10",
        "17",
        "3103",
        "37",
        "https://id.gs1.org/",
        GS,
        "(",
        ")",
    ]
)
_SCANNISH = st.lists(st.one_of(_PIECES, st.text(alphabet="0123456789", max_size=14), st.text(max_size=4)))


@settings(max_examples=300)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")), _SCANNISH.map("".join)))
def test_any_input_gives_a_scan_or_a_barcode_error(raw: str) -> None:
    try:
        result = scan(raw)
    except BarcodeError:
        # The catalog side only forgives the check digits of variable-measure codes.
        try:
            key = catalog_key(raw)
        except BarcodeError:
            return
        assert key.startswith("VM:")
        return
    assert result.raw == raw.strip("\r\n")
    assert result.lookup_key
    assert catalog_key(raw) == result.lookup_key
    if result.gtin is not None:
        assert len(result.gtin) == 14
        assert result.gtin.isascii()
        assert result.gtin.isdigit()
