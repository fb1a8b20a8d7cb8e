"""Catalog import (CSV and JSON Lines) and lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.catalog_import import ImportRejected, import_catalog
from appliance.errors import BarcodeError, InputError, NotFound
from appliance.ledger import verify
from appliance.till import Till

T = "2026-03-02T09:30:00.000Z"
HEADER = "sku,name,price,barcode,tax_class\n"


def _import(till: Till, path: Path, **kw: object):  # type: ignore[no-untyped-def]
    return import_catalog(
        till.ledger, path, currency=till.currency, tax_classes=till.config.tax.classes.keys(),
        layouts=till.layouts, time=T, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _csv(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "items.csv"
    path.write_text(header + body, encoding="utf-8")
    return path


def test_csv_import_with_several_barcodes(till: Till, tmp_path: Path) -> None:
    path = _csv(tmp_path, "A1,Milk,1.15,4012345678901|036000291452,reduced\nB2,Beer,0.99,BEER-1,standard\n")
    report = _import(till, path)
    assert (report.imported, report.skipped) == (2, 0)
    milk = till.catalog.by_sku("A1")
    assert milk.price == 115 and milk.tax_class == "reduced" and milk.unit == "each"
    assert set(milk.barcodes) == {"4012345678901", "036000291452"}
    # UPC-A and its EAN-13 form find the same item
    assert till.catalog.lookup(till.parse("0036000291452")).sku == "A1"
    assert till.catalog.lookup(till.parse("036000291452")).sku == "A1"
    assert till.catalog.lookup(till.parse("BEER-1")).sku == "B2"
    entry = till.ledger.entry(till.ledger.head()[0])
    assert entry is not None and entry.type == "catalog.imported"
    assert json.loads(entry.payload)["imported"] == 2


def test_optional_columns(till: Till, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "W1,Wine,6.99,4006040014003,standard,each,drinks,yes,true\nP1,Pears,2.49,4420,reduced,kg,produce,no,0\n",
        header="sku,name,price,barcode,tax_class,unit,department,age_restricted,active\n",
    )
    _import(till, path)
    wine, pears = till.catalog.by_sku("W1"), till.catalog.by_sku("P1")
    assert wine.age_restricted and wine.active and wine.department == "drinks"
    assert pears.weighed and not pears.active


def test_jsonl_import(till: Till, tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    rows = [
        {"sku": "J1", "name": "Jam", "price": "2.50", "barcode": ["4000417025005"], "tax_class": "reduced"},
        {
            "sku": "J2",
            "name": "Jelly",
            "price": 1.5,
            "barcode": "4000417020000|JELLY",
            "tax_class": "reduced",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert _import(till, path).imported == 2
    assert till.catalog.by_sku("J2").price == 150
    assert till.catalog.lookup(till.parse("JELLY")).sku == "J2"


BAD_ROWS = [
    ("X,Thing,abc,4006381333931,standard", "is not an amount"),
    ("X,Thing,-1.00,4006381333931,standard", "negative"),
    ("X,Thing,1.999,4006381333931,standard", "more than 2 decimals"),
    ("X,Thing,99999999.00,4006381333931,standard", "above the limit"),
    ("X,Thing,1.00,4006381333932,standard", "bad check digit"),
    ("X,Thing,1.00,4006381333931,standrd", "did you mean 'standard'"),
    ("X,,1.00,4006381333931,standard", "name is empty"),
    ("X,Thing,1.00,,standard", "barcode is empty"),
    ("X,Thing,1.00", "has 3 fields"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_bad_row_rejects_whole_file_with_line_number(till: Till, tmp_path: Path, row: str, message: str) -> None:
    path = _csv(tmp_path, f"G1,Good,1.00,5901234123457,standard\n{row}\nG2,Good2,2.00,GOOD2,standard\n")
    head = till.ledger.head()
    with pytest.raises(ImportRejected) as exc:
        _import(till, path)
    assert exc.value.report.errors[0].line == 3
    assert message in exc.value.report.errors[0].message
    assert "line 3" in str(exc.value)
    assert till.catalog.count() == 0  # atomic: the good rows are not in either
    assert till.ledger.head() == head


def test_skip_bad_imports_the_good_rows(till: Till, tmp_path: Path) -> None:
    path = _csv(tmp_path, "G1,Good,1.00,5901234123457,standard\nB,Bad,x,123,standard\nG2,Good2,2.00,GOOD2,standard\n")
    report = _import(till, path, skip_bad=True)
    assert (report.imported, report.skipped) == (2, 1)
    assert report.errors[0].line == 3
    assert till.catalog.count() == 2


def test_duplicate_sku_and_barcode_in_one_file(till: Till, tmp_path: Path) -> None:
    path = _csv(tmp_path, "A,One,1.00,CODE1,standard\nA,Again,1.00,CODE2,standard\nB,Two,1.00,CODE1,standard\n")
    with pytest.raises(ImportRejected) as exc:
        _import(till, path)
    messages = [str(e) for e in exc.value.report.errors]
    assert messages == [
        "line 3: sku A appears twice in the file",
        "line 4: barcode CODE1 is also given for sku A",
    ]


def test_reimport_updates_items_and_moves_barcodes(till: Till, tmp_path: Path) -> None:
    _import(till, _csv(tmp_path, "A,One,1.00,CODE1|CODE2,standard\n"))
    _import(till, _csv(tmp_path, "A,One v2,1.50,CODE1,standard\nB,Two,2.00,CODE2,standard\n"))
    assert till.catalog.by_sku("A").name == "One v2"
    assert till.catalog.by_sku("A").barcodes == ("CODE1",)
    assert till.catalog.lookup(till.parse("CODE2")).sku == "B"
    assert verify(till.ledger).ok


def test_header_problems(till: Till, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="header lacks column"):
        _import(till, _csv(tmp_path, "", header="sku,name,price\n"))
    with pytest.raises(ImportRejected, match="unknown field 'departmnt'; did you mean 'department'"):
        _import(till, _csv(tmp_path, "A,B,1.00,C,standard,x\n", header=HEADER.strip() + ",departmnt\n"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="is empty"):
        _import(till, empty)


def test_unreadable_files(till: Till, tmp_path: Path) -> None:
    binary = tmp_path / "bin.csv"
    binary.write_bytes(HEADER.encode() + b"\xff\xfe\x00garbage\n")
    with pytest.raises(InputError, match="not UTF-8"):
        _import(till, binary)
    with pytest.raises(InputError, match="unknown catalog format"):
        _import(till, tmp_path / "x.xlsx")
    with pytest.raises(InputError, match="no such file"):
        _import(till, tmp_path / "missing.csv")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"sku": "A"\n[1, 2]\n')
    with pytest.raises(ImportRejected) as exc:
        _import(till, bad_json)
    assert [e.line for e in exc.value.report.errors] == [1, 2]


def test_lookup_errors(demo_till: Till) -> None:
    with pytest.raises(NotFound, match="barcode 4000000000006 not found"):
        demo_till.catalog.lookup(demo_till.parse("4000000000006"))
    with pytest.raises(BarcodeError, match="bad check digit"):
        demo_till.parse("4006381333932")
    with pytest.raises(NotFound):
        demo_till.catalog.by_sku("nope")


def test_variable_measure_labels_find_their_item(demo_till: Till) -> None:
    # catalog holds 2100001000004 (weight layout 21, item 00001); any weight on the label finds it
    scan = demo_till.parse("2100001007348")
    assert demo_till.catalog.lookup(scan).sku == "2001"
    assert str(scan.weight_kg) == "0.734"


def test_search_by_name(demo_till: Till) -> None:
    names = [i.name for i in demo_till.catalog.search("milk")]
    assert names == ["Whole Milk 1l"]
    assert demo_till.catalog.search("100%_") == []
