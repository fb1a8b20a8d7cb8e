"""The catalog: items, their barcodes and promotions, stored in the ledger database.

Barcodes are stored under their *catalog key* (see :func:`appliance.barcode.catalog_key`)
so a UPC-A and its EAN-13 form, or every weight on a scale label, find one item.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from appliance.errors import NotFound

if TYPE_CHECKING:
    from appliance.barcode import Scan
    from appliance.money import Currency
    from appliance.promotions import Promotion

Unit = Literal["each", "kg"]
UNITS: tuple[Unit, ...] = ("each", "kg")


@dataclass(frozen=True)
class Item:
    """A sellable item. ``price`` is minor units per unit, or per kg when ``unit`` is "kg"."""

    sku: str
    name: str
    price: int
    tax_class: str
    unit: Unit = "each"
    department: str = ""
    barcodes: tuple[str, ...] = ()
    age_restricted: bool = False
    active: bool = True

    @property
    def weighed(self) -> bool:
        return self.unit == "kg"


_ITEM_COLUMNS = "i.sku, i.name, i.price, i.tax_class, i.unit, i.department, i.age_restricted, i.active"


class Catalog:
    """Read access to the items in a ledger database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _item(self, row: Sequence[object]) -> Item:
        sku = str(row[0])
        codes = tuple(
            str(r[0]) for r in self._conn.execute("SELECT code FROM barcodes WHERE sku = ? ORDER BY code", (sku,))
        )
        unit: Unit = "kg" if row[4] == "kg" else "each"
        return Item(
            sku=sku,
            name=str(row[1]),
            price=int(str(row[2])),
            tax_class=str(row[3]),
            unit=unit,
            department=str(row[5]),
            barcodes=codes,
            age_restricted=bool(row[6]),
            active=bool(row[7]),
        )

    def by_key(self, key: str) -> Item:
        """The item whose barcode has this catalog key."""
        row = self._conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM barcodes b JOIN items i ON i.sku = b.sku WHERE b.key = ?", (key,)
        ).fetchone()
        if row is None:
            raise NotFound(f"barcode {key} not found in the catalog")
        return self._item(row)

    def lookup(self, scan: Scan) -> Item:
        """The item a scan refers to; :class:`NotFound` with the scanned text otherwise."""
        try:
            return self.by_key(scan.lookup_key)
        except NotFound:
            raise NotFound(f"barcode {scan.raw} not found in the catalog") from None

    def by_sku(self, sku: str) -> Item:
        """The item with this SKU."""
        row = self._conn.execute(f"SELECT {_ITEM_COLUMNS} FROM items i WHERE i.sku = ?", (sku,)).fetchone()
        if row is None:
            raise NotFound(f"SKU {sku} not found in the catalog")
        return self._item(row)

    def search(self, text: str, *, limit: int = 20) -> list[Item]:
        """Active items whose name or SKU contains ``text`` (case-insensitive), by name."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._conn.execute(
            f"SELECT {_ITEM_COLUMNS} FROM items i WHERE i.active = 1 AND (i.name LIKE ? ESCAPE '\\' "
            "OR i.sku LIKE ? ESCAPE '\\') ORDER BY i.name LIMIT ?",
            (pattern, pattern, max(1, min(limit, 200))),
        ).fetchall()
        return [self._item(r) for r in rows]

    def count(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM items").fetchone()[0])

    def promotions(self, currency: Currency) -> list[Promotion]:
        """All stored promotions (their windows decide whether they are active now)."""
        from appliance.promotions import promotion_from_dict

        return [
            promotion_from_dict(json.loads(str(body)), currency)
            for (body,) in self._conn.execute("SELECT body FROM promotions ORDER BY id")
        ]
