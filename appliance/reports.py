"""Plain-text rendering of X and Z reports (their data comes from :mod:`appliance.shifts`)."""

from __future__ import annotations

from typing import Any

from appliance.money import Currency


def render_report(report: dict[str, Any], currency: Currency, width: int = 42) -> str:
    """An X or Z report as fixed-width text."""
    m = currency.plain

    def row(left: str, right: object) -> str:
        text = str(right)
        return f"{left[: width - len(text) - 1]:<{width - len(text) - 1}} {text}"

    kind = report["kind"]
    title = f"Z REPORT {report['z_number']}" if kind == "Z" else "X REPORT (shift open)"
    out = [title.center(width).rstrip(), f"Shift {report['shift_id']} opened {report['opened_at']} by "
                                         f"{report['opened_by']}"[:width]]  # fmt: skip
    if kind == "Z":
        out.append(f"Closed {report['closed_at']} by {report['closed_by']}"[:width])
    out.append("-" * width)
    out.append(row(f"Sales ({report['sales']['count']})", m(report["sales"]["total"])))
    out.append(row(f"Returns ({report['returns']['count']})", "-" + m(report["returns"]["total"])))
    out.append(row("Net sales", m(report["net_sales"])))
    out.append(row("Discounts given", m(report["discounts"])))
    if report.get("points_discounts"):  # reports from before points discounts have no such key
        out.append(row("  of which loyalty points", m(report["points_discounts"])))
    out.append("Tax by rate")
    out.extend(row(f"  {t['name']} {t['percent']}% on {m(t['taxable'])}", m(t["tax"])) for t in report["taxes"])
    out.append("Tenders")
    out.extend(row(f"  {kind_}", m(amount)) for kind_, amount in report["tenders"].items())
    cash = report["cash"]
    out.append("Cash drawer")
    out.append(row("  Float", m(report["float"])))
    for key, label in (("paid_in", "Paid in"), ("paid_out", "Paid out"), ("safe_drop", "Safe drops")):
        if cash[key]:
            out.append(row(f"  {label}", m(cash[key])))
    out.append(row("  Expected", m(cash["expected"])))
    if cash["counted"] is None:
        out.append(row("  Counted", "not counted"))
    else:
        for denom, n in (cash["by_denomination"] or {}).items():
            out.append(row(f"    {n} x {denom}", ""))
        out.append(row("  Counted", m(cash["counted"])))
        over = cash["over_short"]
        out.append(row("  Over" if over >= 0 else "  Short", m(abs(over))))
    voids = report["voids"]
    out.append(row("Voided lines", f"{voids['lines']} ({m(voids['lines_amount'])})"))
    out.append(row("Voided sales", f"{voids['sales']} ({m(voids['sales_total'])})"))
    out.append(row("Price overrides", report["overrides"]))
    out.append(row("No-sale drawer opens", report["no_sales"]))
    out.append("Sales per cashier")
    out.extend(row(f"  {who} ({v['sales']})", m(v["total"])) for who, v in report["cashiers"].items())
    avg = report["average_duration_ms"]
    out.append(row("Average sale duration", "-" if avg is None else f"{avg / 1000:.1f} s"))
    return "\n".join(out) + "\n"
