"""The tillbox command, run as a real subprocess."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import __version__

CATALOG = Path(__file__).parent.parent / "appliance" / "demo_data" / "catalog.csv"
PROMOS = CATALOG.with_name("promotions.jsonl")


def run(*args: str, data: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "appliance.cli", *args]
    if data is not None:
        cmd += ["--data-dir", str(data)]
    return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=60, check=False)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    out = run("catalog", "import", str(CATALOG), data=tmp_path)
    assert out.returncode == 0, out.stderr
    assert run("catalog", "promotions", str(PROMOS), data=tmp_path).returncode == 0
    assert run("shift", "open", "--float", "100.00", data=tmp_path).returncode == 0
    return tmp_path


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tillbox {__version__}"


def test_import_reports(tmp_path: Path) -> None:
    out = run("catalog", "import", str(CATALOG), data=tmp_path)
    assert out.stdout.strip() == "imported 17 item(s), skipped 0 bad row(s)"
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,name,price,barcode,tax_class\nA,x,1.00,AA,standard\nB,y,oops,BB,standard\n")
    out = run("catalog", "import", str(bad), data=tmp_path)
    assert out.returncode == 1
    assert "bad.csv: line 3: 'oops' is not an amount" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("tillbox: error: catalog rejected, nothing imported")
    out = run("catalog", "import", "--skip-bad", str(bad), data=tmp_path)
    assert out.returncode == 0 and "imported 1 item(s), skipped 1" in out.stdout


def test_scripted_sale_text_receipt(data: Path) -> None:
    out = run("sale", "--scan", "4006381333931", "--scan", "4006381333931", "--scan", "4006381333931",
              "--pay", "cash:5", data=data)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Water 3 for 2" in out.stdout
    assert "TOTAL EUR" in out.stdout and "1.58" in out.stdout
    assert "Change                                3.42" in out.stdout
    assert "Receipt 1" in out.stdout and "Ref TB-till-1-000001  J4:" in out.stdout


def test_scripted_sale_json_and_split(data: Path) -> None:
    out = run("sale", "--scan", "5901234123457", "--scan", "9780201379624", "--pay", "cash:2", "--pay", "card",
              "--json", data=data)  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["total"] == 548 and doc["number"] == 1
    assert [(t["kind"], t["amount"]) for t in doc["tenders"]] == [("cash", 200), ("card", 348)]
    assert doc["cashier"] == "technician"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scan", "4000000000006", "--pay", "card"], "barcode 4000000000006 not found in the catalog"),
        (["--scan", "4006381333932", "--pay", "card"], "bad check digit"),
        (["--scan", "4006381333931", "--pay", "cash:0.10"], "tenders do not cover the total"),
        (["--scan", "4006381333931", "--pay", "cash:-1"], "must be positive"),
        (["--scan", "4006381333931", "--pay", "cheque"], "must be cash or card"),
        (["--scan", "4006381333931", "--pay", "cash:1.234"], "more than 2 decimals"),
    ],
)
def test_sale_errors_are_one_line(data: Path, args: list[str], message: str) -> None:
    out = run("sale", *args, data=data)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tillbox: error:") and message in lines[0]
    assert run("ledger", "verify", data=data).returncode == 0


def test_ledger_verify_ok_and_tampered(data: Path) -> None:
    for _ in range(3):
        assert run("sale", "--scan", "4006381333931", "--pay", "card", data=data).returncode == 0
    out = run("ledger", "verify", data=data)
    assert out.returncode == 0 and out.stdout.startswith("ledger ok: 6 journal entries, 3 sales verified")
    conn = sqlite3.connect(data / "ledger.db")
    conn.execute("DROP TRIGGER journal_no_update")
    conn.execute("UPDATE journal SET time = '2020-01-01T00:00:00.000Z' WHERE seq = 4")
    conn.commit()
    conn.close()
    out = run("ledger", "verify", "--json", data=data)
    assert out.returncode == 3
    result = json.loads(out.stdout)
    assert result["ok"] is False and result["first_bad_seq"] == 4
    out = run("ledger", "verify", data=data)
    assert out.returncode == 3 and "journal entry 4" in out.stderr


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ledger.db").write_bytes(b"\x00garbage" * 1000)
    out = run("ledger", "verify", data=tmp_path)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "not a tillbox ledger" in out.stderr


def test_bad_config_key_has_hint(tmp_path: Path) -> None:
    (tmp_path / "tillbox.toml").write_text("[ui]\nprot = 8080\n")
    out = run("config", "check", data=tmp_path)
    assert out.returncode == 1
    assert "unknown key 'prot' in [ui]; did you mean 'port'?" in out.stderr
    out = run("sale", "--scan", "1", "--pay", "card", data=tmp_path)
    assert out.returncode == 1 and "did you mean 'port'" in out.stderr


def test_config_reference_matches_docs() -> None:
    out = run("config", "reference")
    docs = Path(__file__).parent.parent / "docs" / "config-reference.md"
    assert out.stdout == docs.read_text(encoding="utf-8")


def test_lookup(data: Path) -> None:
    out = run("catalog", "lookup", "036000291452", data=data)
    assert out.returncode == 1 and "nothing matches" in out.stderr
    out = run("catalog", "lookup", "banana", data=data)
    assert out.stdout.startswith("2001\tBananas\t1.69/kg\treduced")


def test_demo_console_rings_a_sale(tmp_path: Path) -> None:
    script = "4006381333931\nqty 0.5 4011\nfoo bar\n999\npay cash 10\nverify\nquit\n"
    out = run("demo", "--console", data=tmp_path / "demo", stdin=script)
    assert out.returncode == 0, out.stderr
    assert "17 items" in out.stdout
    assert "! don't understand 'foo bar'" in out.stdout
    assert "! barcode 999 not found" in out.stdout
    assert "Ref TB-till-1-000001" in out.stdout and "ledger ok" in out.stdout


def test_sale_needs_an_open_shift(tmp_path: Path) -> None:
    assert run("catalog", "import", str(CATALOG), data=tmp_path).returncode == 0
    out = run("sale", "--scan", "4006381333931", "--pay", "card", data=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == "tillbox: error: no shift is open; open one first (tillbox shift open --float AMOUNT)"


def test_shift_reports_and_return(data: Path) -> None:
    assert (
        run("sale", "--scan", "5901234123457", "--scan", "9780201379624", "--pay", "cash:10", data=data).returncode == 0
    )
    out = run("return", "--receipt", "TB-till-1-000001", "--line", "2", data=data)
    assert out.returncode == 0, out.stderr
    assert "RETURN" in out.stdout and "-3.49" in out.stdout
    out = run("return", "--receipt", "TB-till-1-000001", "--line", "2", data=data)
    assert out.returncode == 1 and "not yet refunded" in out.stderr
    assert run("shift", "cash", "safe_drop", "50.00", "--reason", "banking", data=data).returncode == 0
    x = json.loads(run("report", "x", "--json", data=data).stdout)
    assert x["kind"] == "X" and x["cash"]["expected"] == 10_000 + 548 - 349 - 5_000
    out = run("report", "z", "--json", "--count", "20.00=2", "--count", "10.00=1", data=data)
    z = json.loads(out.stdout)
    assert isinstance(z["z_number"], int) and z["z_number"] == 1
    assert z["cash"]["over_short"] == 5_000 - 5_199
    out = run("report", "z", data=data)
    assert out.returncode == 1 and "no shift is open" in out.stderr
    assert run("shift", "open", "--float", "50", data=data).returncode == 0
    out = run("report", "z", data=data)
    assert out.returncode == 0 and "Z REPORT 2" in out.stdout and "not counted" in out.stdout
    assert run("ledger", "verify", data=data).returncode == 0


def test_reprint_and_staff(data: Path) -> None:
    assert run("sale", "--scan", "5901234123457", "--pay", "card", data=data).returncode == 0
    out = run("reprint", "TB-till-1-000001", data=data)
    assert out.returncode == 0 and "*** COPY 1 ***" in out.stdout
    out = run("staff", "add", "ann", "Ann", "--role", "cashier", data=data, stdin="1234\n")
    assert out.returncode == 0 and "added cashier ann" in out.stdout
    out = run("staff", "add", "bob", "Bob", "--role", "cashier", data=data, stdin="12\n")
    assert out.returncode == 1 and "4 to 8 digits" in out.stderr
