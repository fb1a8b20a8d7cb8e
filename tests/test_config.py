"""Tests for appliance.config: schema, validation messages, defaults and the generated reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import (
    Config,
    InvalidConfigError,
    RoundingMode,
    Table,
    allowed_text,
    load_config,
    main,
    parse_config,
    render_reference,
    schema_fields,
)
from appliance.errors import ConfigError
from appliance.money import ROUNDING_MODES

DOCS = Path(__file__).resolve().parents[1] / "docs"

US_STORE = """
[store]
id = "nyc-5th"
device_id = "lane-3"
name = "Fifth Avenue Outfitters"
address = ["500 Fifth Ave", "New York, NY 10110"]
timezone = "America/New_York"
tax_id = "12-3456789"

[currency]
code = "USD"
locale = "en_US"
cash_rounding = 1
rounding_mode = "half_even"

[tax]
prices_include_tax = false
rounding = "invoice"

[tax.rates.state]
name = "NY State"
percent = 4

[tax.rates.city]
name = "NYC"
percent = "4.5"

[tax.classes.general]
rates = ["state", "city"]

[tax.classes.clothing]
rates = ["state", "city"]

[[tax.classes.clothing.exemptions]]
threshold = "110.00"
mode = "below"

[tax.classes.groceries]
rates = []

[[barcodes.variable_measure]]
prefix = "02"
kind = "price"
item_digits = 5
value_digits = 4
value_decimals = 2
price_check_digit = true

[sale]
max_quantity = 50
max_weight_kg = "22.68"
max_line_amount = 2500.00
max_sale_amount = "20000"
discount_approval_percent = 12.5
age_restriction_min_age = 21

[ledger]
path = "data/ledger.sqlite"
synchronous = "EXTRA"
outbox_retention_days = 90
wal_autocheckpoint = 2000

[devices]
mode = "real"

[sync]
enabled = true
brokers = ["mqtts://hq.example.com:8883", "mqtt://10.0.0.5"]
client_id = "nyc-5th-lane-3"
keepalive = 30

[ui]
listen_host = "0.0.0.0"
port = 8443
languages = ["en", "es", "zh_Hant"]
default_language = "es"
"""


def parse(text: str, **environ: str) -> Config:
    return parse_config(text, environ=environ)


def problem_of(text: str) -> str:
    """The single problem message for an invalid config (without the source prefix)."""
    with pytest.raises(InvalidConfigError) as info:
        parse(text)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def walk(value: Any) -> Iterator[Any]:
    """Every value reachable from a config object."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from walk(getattr(value, f.name))
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, tuple):
        for item in value:
            yield from walk(item)


def decimal_fields(table: type[Table], obj: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of every decimal-kind key in a parsed config, recursing into sub-tables."""
    for key, f, spec in schema_fields(table):
        value = getattr(obj, f.name)
        if spec.kind == "decimal":
            yield key, value
        elif spec.table is not None:
            items = [value] if spec.kind == "table" else value.values() if spec.kind == "map" else value
            for item in items:
                yield from decimal_fields(spec.table, item)


def all_tables(table: type[Table] = Config) -> Iterator[type[Table]]:
    yield table
    for _, _, spec in schema_fields(table):
        if spec.table is not None:
            yield from all_tables(spec.table)


# --------------------------------------------------------------------------- defaults and valid files


def test_defaults_are_a_german_like_demo_store() -> None:
    config = Config.defaults()
    assert config.store.id == "demo"
    assert config.store.device_id == "till-1"
    assert config.store.timezone == "UTC"
    assert config.currency.code == "EUR"
    assert config.currency.exponent == 2
    assert config.currency_settings.locale == "de_DE"
    assert {code: r.percent for code, r in config.tax.rates.items()} == {
        "standard": Decimal(19),
        "reduced": Decimal(7),
    }
    assert {name: c.rates for name, c in config.tax.classes.items()} == {
        "standard": ("standard",),
        "reduced": ("reduced",),
        "exempt": (),
    }
    assert config.tax.prices_include_tax is True
    assert config.sale.max_line_amount == 1_000_000  # 10000.00 EUR in cents
    assert config.sale.max_sale_amount == 10_000_000
    assert config.devices.mode == "sim"
    assert config.sync.enabled is False
    assert config.sync.client_id == "tillbox-demo-till-1"
    assert config.ui.languages == ("en", "de")
    assert config.ui.default_language == "en"
    assert config.barcodes.variable_measure == ()


def test_empty_text_missing_path_and_defaults_agree() -> None:
    assert parse("") == Config.defaults()
    assert load_config(None, environ={}) == Config.defaults()
    assert parse("[store]\n[ui]\n") == Config.defaults()


def test_full_us_style_file_loads() -> None:
    config = parse(US_STORE)
    assert config.store.address == ("500 Fifth Ave", "New York, NY 10110")
    assert config.store.timezone == "America/New_York"
    assert config.currency.code == "USD"
    assert config.currency_settings.rounding_mode == "half_even"
    assert config.tax.prices_include_tax is False
    assert config.tax.rounding == "invoice"
    assert config.tax.rates["city"].percent == Decimal("4.5")
    assert set(config.tax.classes) == {"general", "clothing", "groceries"}
    (exemption,) = config.tax.classes["clothing"].exemptions
    assert exemption.threshold == 11_000
    assert exemption.mode == "below"
    assert exemption.rates == ()
    (layout,) = config.barcodes.variable_measure
    assert (layout.prefix, layout.kind, layout.value_digits, layout.price_check_digit) == (
        "02",
        "price",
        4,
        True,
    )
    assert config.sale.max_weight_kg == Decimal("22.68")
    assert config.sale.max_line_amount == 250_000
    assert config.sale.max_sale_amount == 2_000_000
    assert config.sale.discount_approval_percent == Decimal("12.5")
    assert config.ledger.synchronous == "EXTRA"
    assert config.ledger_path(Path("var")) == Path("var/data/ledger.sqlite")
    assert config.devices.mode == "real"
    assert config.sync.brokers == ("mqtts://hq.example.com:8883", "mqtt://10.0.0.5")
    assert config.sync.client_id == "nyc-5th-lane-3"
    assert config.ui.port == 8443
    assert config.ui.languages == ("en", "es", "zh_Hant")


def test_example_file_in_docs_loads() -> None:
    config = load_config(DOCS / "tillbox.example.toml", environ={})
    assert config.store.id == "berlin-mitte"
    assert config.store.name == "Bäckerei & Markt Mitte"
    assert config.tax.rates["reduced"].percent == Decimal(7)
    assert config.tax.classes["food"].rates == ("reduced",)
    assert [v.prefix for v in config.barcodes.variable_measure] == ["28", "29"]
    assert config.sale.max_line_amount == 250_000
    assert config.devices.mode == "real"
    assert config.sync.client_id == "tillbox-berlin-mitte-till-2"


def test_money_uses_the_currency_exponent() -> None:
    config = parse('[currency]\ncode = "JPY"\nlocale = "ja_JP"\n[sale]\nmax_line_amount = "5000"\n')
    assert config.sale.max_line_amount == 5000
    assert config.sale.max_sale_amount == 100_000  # the "100000.00" default has only zero decimals
    problem = problem_of('[currency]\ncode = "JPY"\n[sale]\nmax_line_amount = "10.5"\n')
    assert problem.startswith("sale.max_line_amount: 10.5")
    assert "JPY" in problem


def test_config_is_immutable() -> None:
    config = Config.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ui.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.tax.rates["zero"] = config.tax.rates["standard"]  # type: ignore[index]


# --------------------------------------------------------------------------- errors


def test_unknown_key_names_section_and_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[ui]\nprot = 8080\n", source="till.toml", environ={})
    assert str(info.value) == "till.toml: unknown key 'prot' in [ui]; did you mean 'port'?"


def test_unknown_section_suggests() -> None:
    assert problem_of('[stor]\nid = "x"\n') == "unknown section [stor]; did you mean [store]?"


def test_unknown_key_in_nested_table_and_array_entry() -> None:
    problem = problem_of('[tax.classes.standard]\nrates = ["standard"]\nexemption = []\n')
    assert problem == "unknown key 'exemption' in [tax.classes.standard]; did you mean 'exemptions'?"
    problem = problem_of(
        '[[barcodes.variable_measure]]\nprefix = "21"\nkind = "weight"\nvalue_decimals = 3\nsize = 1\n'
    )
    assert problem.startswith("unknown key 'size' in [[barcodes.variable_measure]] #1")
    assert "value_digits" in problem  # no close match: the known keys are listed


def test_top_level_key_points_to_its_section() -> None:
    assert "[ui]" in problem_of("port = 8080\n")


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ('[ui]\nport = "8080"\n', ["ui.port", '"8080"', "integer"]),
        ("[ui]\nport = true\n", ["ui.port", "true", "integer"]),
        ("[ui]\nport = 80.0\n", ["ui.port", "80.0", "integer"]),
        ("[tax]\nprices_include_tax = 1\n", ["tax.prices_include_tax", "true or false", "1"]),
        ("[store]\nname = 7\n", ["store.name", "string", "7"]),
        ('[store]\naddress = "Main St 1"\n', ["store.address", "array of strings"]),
        ("[ui]\nlanguages = [1, 2]\n", ["ui.languages", "array of strings"]),
        ('[sale]\nmax_weight_kg = "heavy"\n', ["sale.max_weight_kg", '"heavy"', "number"]),
        ("[sale]\nmax_line_amount = true\n", ["sale.max_line_amount", "amount"]),
        ("ui = 5\n", ["ui", "table", "5"]),
        ("[tax]\nrates = 5\n", ["tax.rates", "table", "5"]),
    ],
)
def test_wrong_type(text: str, parts: list[str]) -> None:
    problem = problem_of(text)
    for part in parts:
        assert part in problem


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("[ui]\nport = 70000\n", ["ui.port", "70000", "65535"]),
        ("[ui]\nport = 0\n", ["ui.port", "0", "1 <= x"]),
        ("[sale]\nmax_quantity = 10000\n", ["sale.max_quantity", "10000", "9999"]),
        ("[currency]\ncash_rounding = 0\n", ["currency.cash_rounding", "0"]),
        (
            '[tax.rates.x]\nname = "X"\npercent = 100\n[tax.classes.x]\nrates = ["x"]\n',
            ["percent", "100", "< 100"],
        ),
        ('[tax.rates.x]\nname = "X"\npercent = -1\n[tax.classes.x]\nrates = ["x"]\n', ["percent", "-1"]),
        ("[sale]\nmax_weight_kg = 0\n", ["sale.max_weight_kg", "x <= 1000"]),
        ('[sale]\nmax_line_amount = "0.00"\n', ["sale.max_line_amount", "x > 0"]),
        ("[sale]\ndiscount_approval_percent = 100.5\n", ["discount_approval_percent", "100.5"]),
        ("[sale]\nmax_weight_kg = inf\n", ["sale.max_weight_kg", "finite"]),
        ("[sale]\nmax_weight_kg = nan\n", ["sale.max_weight_kg", "finite"]),
        ('[sale]\nmax_line_amount = "1.999"\n', ["sale.max_line_amount", "1.999", "EUR"]),
    ],
)
def test_out_of_bounds(text: str, parts: list[str]) -> None:
    problem = problem_of(text)
    for part in parts:
        assert part in problem


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ('[tax]\nrounding = "lines"\n', ["tax.rounding", '"lines"', '"invoice"', 'did you mean "line"?']),
        ('[ledger]\nsynchronous = "full"\n', ["ledger.synchronous", 'did you mean "FULL"?']),
        ('[devices]\nmode = "hardware"\n', ["devices.mode", '"sim", "real"']),
        ('[currency]\nrounding_mode = "bankers"\n', ["currency.rounding_mode", '"half_even"']),
    ],
)
def test_bad_choice(text: str, parts: list[str]) -> None:
    problem = problem_of(text)
    for part in parts:
        assert part in problem


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ('[store]\ntimezone = "Europe/Berlln"\n', ["store.timezone", "time zone", '"Europe/Berlin"']),
        ('[store]\ntimezone = "../etc/passwd"\n', ["store.timezone", "time zone"]),
        ('[currency]\ncode = "XYZ"\n', ["currency.code", '"XYZ"', "ISO 4217"]),
        ('[currency]\ncode = "eur"\n', ["currency.code", 'did you mean "EUR"?']),
        ('[currency]\nlocale = "de-DE"\n', ["currency.locale", 'did you mean "de_DE"?']),
        ('[currency]\nlocale = "xx_YY"\n', ["currency.locale", '"xx_YY"']),
        ('[store]\nid = "Main Store"\n', ["store.id", '"Main Store"', "lowercase"]),
        ('[store]\nname = ""\n', ["store.name", "empty"]),
        ('[ui]\nlisten_host = ""\n', ["ui.listen_host"]),
        ('[ui]\nlisten_host = "till one"\n', ["ui.listen_host", "host name"]),
        ('[ui]\nlanguages = ["en", "xx"]\n', ["ui.languages", '"xx"']),
        ('[ui]\nlanguages = ["en", "en"]\n', ["ui.languages", "twice"]),
        ("[ui]\nlanguages = []\n", ["ui.languages", "empty"]),
        ('[ui]\ndefault_language = "fr"\n', ["ui.default_language", "'fr'", "languages"]),
        ('[ledger]\npath = "/var/lib/ledger.db"\n', ["ledger.path", "relative"]),
        ('[ledger]\npath = "../ledger.db"\n', ["ledger.path", "data directory"]),
        ('[sync]\nbrokers = ["http://hq:1883"]\n', ["sync.brokers", "mqtt://"]),
        ('[sync]\nbrokers = ["mqtt://"]\n', ["sync.brokers", "host"]),
        ('[sync]\nbrokers = ["mqtt://hq:99999"]\n', ["sync.brokers", "not a valid URL"]),
        ('[sync]\nbrokers = ["mqtt://hq/topic"]\n', ["sync.brokers", "only scheme"]),
        ("[sync]\nenabled = true\n", ["sync.brokers", "enabled"]),
        ('[sync]\nclient_id = "till #1"\n', ["sync.client_id", '"till #1"']),
        ('[sale]\nmax_line_amount = "200000.00"\n', ["sale.max_line_amount", "max_sale_amount"]),
    ],
)
def test_bad_value(text: str, parts: list[str]) -> None:
    problem = problem_of(text)
    for part in parts:
        assert part in problem


def test_class_referencing_unknown_rate() -> None:
    problem = problem_of('[tax.classes.food]\nrates = ["reducd"]\n')
    assert problem.startswith("tax.classes.food.rates: unknown rate 'reducd'; did you mean 'reduced'?")


def test_new_rates_without_classes_explains_the_defaults() -> None:
    problem = problem_of('[tax.rates.vat]\nname = "VAT"\npercent = 20\n')
    assert "'reduced', 'standard'" in problem
    assert "[tax.classes.*]" in problem


def test_exemption_must_name_rates_of_its_class() -> None:
    text = (
        '[tax.classes.clothing]\nrates = ["reduced"]\n'
        '[[tax.classes.clothing.exemptions]]\nthreshold = "110.00"\nmode = "below"\nrates = ["standard"]\n'
    )
    assert problem_of(text).startswith("tax.classes.clothing.exemptions[1].rates: rate 'standard'")
    text = '[tax.classes.free]\nrates = []\n[[tax.classes.free.exemptions]]\nthreshold = 5\nmode = "excess"\n'
    assert "no rates" in problem_of(text)


def test_missing_required_key() -> None:
    text = '[tax.rates.standard]\nname = "S"\n[tax.rates.reduced]\nname = "R"\npercent = 7\n'
    assert problem_of(text) == "missing key 'percent' in [tax.rates.standard]"


def test_bad_map_key() -> None:
    assert "code 'bad code'" in problem_of('[tax.rates."bad code"]\nname = "B"\npercent = 1\n')


@pytest.mark.parametrize(
    ("entry", "parts"),
    [
        ('prefix = "30"\nkind = "price"\nvalue_decimals = 2', ["variable_measure[1].prefix", '"30"']),
        ('prefix = "2"\nkind = "price"\nvalue_decimals = 2', ["variable_measure[1].prefix"]),
        ('prefix = "21"\nkind = "weight"\nvalue_decimals = 3\nitem_digits = 4', ["item_digits", "10", "9"]),
        (
            'prefix = "22"\nkind = "price"\nvalue_decimals = 2\nitem_digits = 3\nvalue_digits = 6\n'
            "price_check_digit = true",
            ["value_digits", "4 or 5"],
        ),
        ('prefix = "22"\nkind = "price"\nvalue_decimals = 3', ["value_decimals", "EUR"]),
        (
            'prefix = "22"\nkind = "weight"',
            ["missing key 'value_decimals'", "[[barcodes.variable_measure]] #1"],
        ),
    ],
)
def test_bad_barcode_layout(entry: str, parts: list[str]) -> None:
    problem = problem_of(f"[[barcodes.variable_measure]]\n{entry}\n")
    for part in parts:
        assert part in problem


def test_duplicate_barcode_prefix() -> None:
    entry = '[[barcodes.variable_measure]]\nprefix = "21"\nkind = "weight"\nvalue_decimals = 3\n'
    assert problem_of(entry * 2).startswith("barcodes.variable_measure[2].prefix")


def test_all_problems_are_reported_together() -> None:
    text = '[ui]\nport = 0\nprot = 1\n[store]\ntimezone = "Mars/Olympus"\n[stor]\n'
    with pytest.raises(InvalidConfigError) as info:
        parse_config(text, source="till.toml", environ={})
    problems = info.value.problems
    assert len(problems) == 4
    assert any(p.startswith("ui.port:") for p in problems)
    assert any(p.startswith("unknown key 'prot'") for p in problems)
    assert any(p.startswith("store.timezone:") for p in problems)
    assert any(p.startswith("unknown section [stor]") for p in problems)
    message = str(info.value)
    assert message.startswith("till.toml: 4 problems: ")
    assert "\n" not in message


def test_invalid_currency_does_not_cascade_into_money_errors() -> None:
    problem = problem_of('[currency]\ncode = "XXY"\n[sale]\nmax_line_amount = "12.345"\n')
    assert problem.startswith("currency.code")


def test_toml_syntax_error_has_line_number() -> None:
    with pytest.raises(ConfigError, match=r"^till\.toml: invalid TOML: .*line 3"):
        parse_config('[ui]\nport = 1\nlanguages = ["en" "de"]\n[store]\n', source="till.toml", environ={})


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path, environ={})
    assert "nope.toml" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, environ={})  # a directory
    path = tmp_path / "latin1.toml"
    path.write_bytes('[store]\nname = "Bäckerei"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, environ={})


def test_file_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "tillbox.toml"
    path.write_text("[ui]\nport = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: ui.port: 0")


# --------------------------------------------------------------------------- decimals, never floats


def test_no_float_anywhere_and_decimal_fields_are_decimal() -> None:
    for config in (
        Config.defaults(),
        parse(US_STORE),
        load_config(DOCS / "tillbox.example.toml", environ={}),
    ):
        assert not any(isinstance(v, float) for v in walk(config))
        found = list(decimal_fields(Config, config))
        assert {key for key, _ in found} >= {"percent", "max_weight_kg", "discount_approval_percent"}
        for _, value in found:
            assert type(value) is Decimal


decimal_text = st.decimals(
    min_value=Decimal("0.001"), max_value=Decimal("999.999"), places=3, allow_nan=False, allow_infinity=False
).map(str)


@given(value=decimal_text, quoted=st.booleans())
def test_decimals_are_exact(value: str, quoted: bool) -> None:
    literal = f'"{value}"' if quoted else value
    config = parse(f"[sale]\nmax_weight_kg = {literal}\n")
    assert type(config.sale.max_weight_kg) is Decimal
    assert config.sale.max_weight_kg == Decimal(value)


@given(cents=st.integers(min_value=1, max_value=10_000_000), quoted=st.booleans())
def test_money_is_exact_minor_units(cents: int, quoted: bool) -> None:
    major = f"{cents // 100}.{cents % 100:02d}"
    literal = f'"{major}"' if quoted else major
    config = parse(f"[sale]\nmax_line_amount = {literal}\nmax_sale_amount = 100000.00\n")
    assert config.sale.max_line_amount == cents


# --------------------------------------------------------------------------- environment override


def test_env_forces_simulated_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    real = '[devices]\nmode = "real"\n'
    assert parse(real).devices.mode == "real"
    assert parse(real, TILLBOX_DEVICES="sim").devices.mode == "sim"
    assert parse(real, TILLBOX_DEVICES="").devices.mode == "real"
    monkeypatch.setenv("TILLBOX_DEVICES", "sim")
    assert parse_config(real).devices.mode == "sim"
    assert load_config(DOCS / "tillbox.example.toml").devices.mode == "sim"
    monkeypatch.delenv("TILLBOX_DEVICES")
    assert parse_config(real).devices.mode == "real"


def test_env_with_other_value_is_an_error() -> None:
    with pytest.raises(ConfigError, match="TILLBOX_DEVICES"):
        parse('[devices]\nmode = "real"\n', TILLBOX_DEVICES="real")


# --------------------------------------------------------------------------- schema and reference


def test_reference_doc_is_up_to_date() -> None:
    expected = render_reference()
    actual = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert actual == expected, "regenerate: python -m appliance.config --reference > docs/config-reference.md"


def test_cli_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--reference"]) == 0
    assert capsys.readouterr().out == render_reference()


def test_cli_checks_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tillbox.toml"
    path.write_text('[ui]\nport = 0\nprot = 1\n[tax]\nrounding = "x"\n', encoding="utf-8")
    assert main(["--check", str(path)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert main(["--check", str(DOCS / "tillbox.example.toml")]) == 0
    assert main(["--check", str(tmp_path / "missing.toml")]) == 1
    assert main([]) == 2


def test_every_key_is_documented_and_listed_in_the_reference() -> None:
    reference = render_reference()
    count = 0
    for table in all_tables():
        for key, _, spec in schema_fields(table):
            count += 1
            assert spec.doc.strip(), key
            assert "\n" not in spec.doc, key
            assert spec.doc.endswith("."), key
            assert any(form in reference for form in (f"`{key}`", f".{key}", f"[{key}]")), key
    assert count > 40


def test_choices_and_defaults_are_consistent() -> None:
    assert set(get_args(RoundingMode)) == set(ROUNDING_MODES)
    for table in all_tables():
        for key, _, spec in schema_fields(table):
            if spec.kind == "choice" and isinstance(spec.default, str):
                assert spec.default in spec.choices, key
            if spec.choices or spec.lo is not None or spec.pattern is not None:
                assert allowed_text(spec), key


# --------------------------------------------------------------------------- adapters to tax and barcode


def test_tax_policy() -> None:
    from appliance.tax import TaxPolicy

    policy = parse(US_STORE).tax_policy()
    assert isinstance(policy, TaxPolicy)
    assert policy.prices_include_tax is False
    assert policy.rounding == "invoice"
    assert policy.rounding_mode == "half_even"
    assert policy.rates["city"].percent == Decimal("4.5")
    assert policy.rates["city"].name == "NYC"
    clothing = policy.classes["clothing"]
    assert clothing.rates == ("state", "city")
    assert [(e.threshold, e.mode, e.rates) for e in clothing.exemptions] == [(11_000, "below", ())]
    assert Config.defaults().tax_policy().classes["exempt"].rates == ()


def test_barcode_layouts() -> None:
    from appliance.barcode import DEFAULT_LAYOUTS

    assert Config.defaults().barcode_layouts() == tuple(DEFAULT_LAYOUTS)
    (layout,) = parse(US_STORE).barcode_layouts()
    assert (layout.prefix, layout.kind, layout.item_digits, layout.value_digits) == ("02", "price", 5, 4)
    assert (layout.value_decimals, layout.price_check_digit) == (2, True)
