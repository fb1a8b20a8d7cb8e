"""Pure ESC/POS codec: printer commands, whole receipts and status bytes.

Nothing here does I/O. :func:`render_receipt` turns a :class:`~appliance.receipt.Receipt`
(a sale, a return or a reprinted copy) and a :class:`PrinterProfile` into the exact bytes a
printer receives, so receipts are pinned byte for byte by golden files. :func:`to_text`
reads such bytes back as plain text (the simulator's view). Command layouts follow the Epson ESC/POS reference:

- ``ESC t n`` code table, ``ESC a n`` justification, ``ESC E n`` emphasis, ``GS ! n`` size;
- ``GS v 0`` raster image, ``GS k 73`` CODE128 (``{A``/``{B``/``{C`` code sets, ``{{`` is a
  literal brace), ``GS ( k`` QR Code (functions 165, 167, 169, 180, 181);
- ``GS V 65/66 n`` feed and cut, ``ESC p m t1 t2`` drawer pulse;
- ``DLE EOT n`` real-time status (1 printer, 2 offline cause, 3 error cause, 4 roll paper).
"""

from __future__ import annotations

import functools
import textwrap
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from appliance.errors import DeviceMisconfigured, InputError

if TYPE_CHECKING:
    from PIL.Image import Image

    from appliance.receipt import Receipt

ESC = 0x1B
GS = 0x1D
DLE = 0x10
LF = 0x0A

#: Dots a 203 dpi head prints across each paper width.
PRINTABLE_DOTS = {58: 384, 80: 576}
#: Font A columns each paper width allows; the first is the default.
PAPER_COLUMNS = {58: (32,), 80: (48, 42)}
FONT_A_DOTS = 12

# -- code pages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodePage:
    """A printer character code table: its name, Python codec and ``ESC t`` number."""

    name: str
    codec: str
    table: int


#: Code tables with the numbers of the Epson standard table list.
CODE_PAGES: dict[str, CodePage] = {
    cp.name: cp
    for cp in (
        CodePage("CP437", "cp437", 0),
        CodePage("CP850", "cp850", 2),
        CodePage("CP860", "cp860", 3),
        CodePage("CP863", "cp863", 4),
        CodePage("CP865", "cp865", 5),
        CodePage("CP1252", "cp1252", 16),
        CodePage("CP866", "cp866", 17),
        CodePage("CP852", "cp852", 18),
        CodePage("CP858", "cp858", 19),
    )
}
_ALIASES = {"PC": "CP", "WPC": "CP", "WINDOWS": "CP"}


def code_page(name: str, table: int | None = None) -> CodePage:
    """Look up a code page by name ("CP858", "PC858", "WPC1252", "windows-1252").

    ``table`` overrides the ``ESC t`` number for devices that number their tables
    differently. Raises :class:`DeviceMisconfigured` for an unknown page.
    """
    key = name.strip().upper().replace("-", "").replace("_", "").replace(" ", "")
    for prefix, canonical in _ALIASES.items():
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            key = canonical + key[len(prefix) :]
    page = CODE_PAGES.get(key)
    if page is None:
        known = ", ".join(CODE_PAGES)
        raise DeviceMisconfigured(f"unknown code page {name!r}; supported: {known}")
    if table is not None:
        if not 0 <= table <= 255:
            raise DeviceMisconfigured(f"code table number {table} is out of range 0..255")
        page = CodePage(page.name, page.codec, table)
    return page


_SUBSTITUTES = {
    "€": "EUR", "‘": "'", "’": "'", "‚": ",", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-",
    "…": "...", "•": "*", "\u00a0": " ", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ø": "o", "Ø": "O",
    "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss", "×": "x", "™": "TM",
}  # fmt: skip


def _encodable(text: str, page: CodePage) -> bool:
    try:
        text.encode(page.codec)
    except UnicodeEncodeError:
        return False
    return True


_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F))


@functools.cache
def _ascii_identical(codec: str) -> bool:
    """Whether the code page prints ASCII 0x20-0x7E as those same bytes (true of the common ones)."""
    try:
        return _PRINTABLE_ASCII.encode(codec) == _PRINTABLE_ASCII.encode("ascii")
    except UnicodeEncodeError:
        return False


def printable(text: str, page: CodePage) -> str:
    """Text reduced to characters the code page can print, one byte each.

    Control characters never pass (a product name cannot smuggle in a command); other
    missing characters are transliterated ("€" -> "EUR" on CP437, "ő" -> "o") or become "?".
    """
    if text.isascii() and text.isprintable() and _ascii_identical(page.codec):
        return text  # the common case, and the hot path of every receipt line
    out: list[str] = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\t\n\r\x0b\x0c":
            out.append(" ")
        elif category == "Cf":
            continue
        elif category in ("Cc", "Cs", "Co", "Cn"):
            out.append("?")
        elif _encodable(ch, page):
            out.append(ch)
        else:
            sub = _SUBSTITUTES.get(ch)
            if sub is None or not _encodable(sub, page):
                sub = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
                if not sub or not sub.isprintable() or not _encodable(sub, page):
                    sub = "?"
            out.append(sub)
    return "".join(out)


def encode_text(text: str, page: CodePage) -> bytes:
    """Encode text for the code page; never raises, never emits control bytes."""
    return printable(text, page).encode(page.codec)


# -- commands -------------------------------------------------------------------------------------

INIT = bytes([ESC, ord("@")])
STATUS_REQUESTS = {n: bytes([DLE, 0x04, n]) for n in (1, 2, 3, 4)}
_ALIGN = {"left": 0, "center": 1, "right": 2}


def cmd_code_table(table: int) -> bytes:
    """``ESC t n``: select the character code table."""
    return bytes([ESC, ord("t"), table])


def cmd_align(where: Literal["left", "center", "right"]) -> bytes:
    """``ESC a n``: justification."""
    return bytes([ESC, ord("a"), _ALIGN[where]])


def cmd_bold(on: bool) -> bytes:
    """``ESC E n``: emphasized mode."""
    return bytes([ESC, ord("E"), int(on)])


def cmd_size(width: int = 1, height: int = 1) -> bytes:
    """``GS ! n``: character width and height multipliers (1..8)."""
    if not (1 <= width <= 8 and 1 <= height <= 8):
        raise ValueError("character size multipliers are 1..8")
    return bytes([GS, ord("!"), (width - 1) << 4 | (height - 1)])


def cmd_feed(lines: int) -> bytes:
    """``ESC d n``: print the buffer and feed ``n`` lines."""
    return bytes([ESC, ord("d"), lines])


def cmd_cut(partial: bool = True, feed: int = 0) -> bytes:
    """``GS V 65/66 n``: feed to the cutter (+ n motion units) and cut fully or partially."""
    return bytes([GS, ord("V"), 66 if partial else 65, feed])


def cmd_pulse(pin: int, on_ms: int, off_ms: int) -> bytes:
    """``ESC p m t1 t2``: drawer kick pulse on connector pin 2 (m=0) or pin 5 (m=1).

    Times are milliseconds, sent in 2 ms units (rounded up, so a pulse is never shorter
    than asked). The OFF time must not be shorter than the ON time.
    """
    if pin not in (0, 1):
        raise DeviceMisconfigured(f"drawer kick pin must be 0 (connector pin 2) or 1 (pin 5), not {pin}")
    if not 2 <= on_ms <= 510:
        raise DeviceMisconfigured(f"drawer pulse on-time {on_ms} ms is out of range 2..510")
    if not on_ms <= off_ms <= 510:
        raise DeviceMisconfigured(f"drawer pulse off-time {off_ms} ms must be between on-time and 510")
    return bytes([ESC, ord("p"), pin, (on_ms + 1) // 2, (off_ms + 1) // 2])


# -- raster images --------------------------------------------------------------------------------

_RASTER_BAND = 128


@dataclass(frozen=True)
class RasterImage:
    """A monochrome bitmap: rows of ``ceil(width / 8)`` bytes, leftmost dot in the MSB, 1 = black."""

    width: int
    height: int
    rows: bytes

    def __post_init__(self) -> None:
        if not (1 <= self.width <= 2040 and 1 <= self.height <= 2303):
            raise DeviceMisconfigured(f"logo size {self.width}x{self.height} is out of range")
        if len(self.rows) != self.bytes_per_row * self.height:
            raise DeviceMisconfigured("logo data does not match its size")

    @property
    def bytes_per_row(self) -> int:
        return (self.width + 7) // 8

    @classmethod
    def from_pattern(cls, pattern: Sequence[str]) -> RasterImage:
        """Build from text rows, ``#`` (or ``X``) for black: handy for tiny logos and tests."""
        width = max((len(r) for r in pattern), default=0)
        out = bytearray()
        for row in pattern:
            bits = [ch in "#X" for ch in row.ljust(width)]
            out += _pack(bits)
        return cls(width, len(pattern), bytes(out))

    @classmethod
    def from_image(cls, image: Image, *, threshold: int = 128) -> RasterImage:
        """Threshold a Pillow image (transparent pixels count as white)."""
        from PIL import Image as PILImage

        rgba = image.convert("RGBA")
        flat = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        grey = flat.convert("L")
        width, height = grey.size
        pixels = grey.tobytes()
        out = bytearray()
        for y in range(height):
            out += _pack([p < threshold for p in pixels[y * width : (y + 1) * width]])
        return cls(width, height, bytes(out))


def _pack(bits: Sequence[bool]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def cmd_raster(image: RasterImage) -> bytes:
    """``GS v 0 0 xL xH yL yH d...``: print the image in normal density, in bands of 128 rows."""
    out = bytearray()
    stride = image.bytes_per_row
    for top in range(0, image.height, _RASTER_BAND):
        rows = min(_RASTER_BAND, image.height - top)
        out += bytes([GS, ord("v"), ord("0"), 0, stride & 0xFF, stride >> 8, rows & 0xFF, rows >> 8])
        out += image.rows[top * stride : (top + rows) * stride]
    return bytes(out)


# -- CODE128 --------------------------------------------------------------------------------------

CODE128_QUIET_MODULES = 10
BARCODE_MODULE_RANGE = (2, 6)


def code128_data(text: str) -> tuple[bytes, int]:
    """ESC/POS ``GS k 73`` data for ``text`` and the symbol count of the printed barcode.

    Digit runs use code set C, one byte per digit pair (value 0..99); everything else uses
    code set B, with ``{{`` for a brace. The symbol count includes the start character,
    code set changes and the check character (not the stop pattern). Raises
    :class:`InputError` for text CODE128 B cannot carry or that is too long.
    """
    if not text or any(not 32 <= ord(c) <= 126 for c in text):
        raise InputError(f"{text!r} cannot be encoded as CODE128 set B/C")
    out = bytearray()
    symbols = 2  # start and check characters
    mode = ""
    i, n = 0, len(text)
    while i < n:
        run = 0
        while i + run < n and text[i + run].isdigit():
            run += 1
        use_c = run >= 4 and (not mode or i + run == n or run >= 6)
        if not mode and run == n and run >= 2:
            use_c = True
        if use_c:
            if run % 2 and mode:
                out += text[i].encode("ascii")  # an odd digit goes in the current set first
                symbols += 1
                i += 1
                run -= 1
            out += b"{C"
            symbols += 1 if mode else 0
            mode = "C"
            for _ in range(run // 2):
                out.append(int(text[i : i + 2]))
                symbols += 1
                i += 2
            continue
        if mode != "B":
            out += b"{B"
            symbols += 1 if mode else 0
            mode = "B"
        out += b"{{" if text[i] == "{" else text[i].encode("ascii")
        symbols += 1
        i += 1
    if len(out) > 255:
        raise InputError(f"{text!r} is too long for one CODE128 barcode")
    return bytes(out), symbols


def code128_modules(symbols: int) -> int:
    """Modules of a CODE128 symbol: 11 per character plus the 13-module stop pattern."""
    return 11 * symbols + 13


def fit_module_width(modules: int, dots: int, preferred: int, minimum: int = BARCODE_MODULE_RANGE[0]) -> int | None:
    """The widest module (dots) from ``preferred`` down that fits ``dots``, or None."""
    for width in range(preferred, minimum - 1, -1):
        if modules * width <= dots:
            return width
    return None


def cmd_code128(data: bytes, *, module: int, height: int, hri: int = 0) -> bytes:
    """``GS H`` HRI position, ``GS h`` height, ``GS w`` module width, ``GS k 73 n data``."""
    return (
        bytes([GS, ord("H"), hri, GS, ord("h"), height, GS, ord("w"), module])
        + bytes([GS, ord("k"), 73, len(data)])
        + data
    )


def decode_code128(data: bytes) -> str:
    """Read ``GS k 73`` data back to text, interpreting code sets as the printer does."""
    out: list[str] = []
    mode = ""
    i = 0
    while i < len(data):
        b = data[i]
        if b == ord("{"):  # never a code set C value, which is 0..99
            code = chr(data[i + 1]) if i + 1 < len(data) else ""
            i += 2
            if code and code in "ABC":
                mode = code
            elif code == "{":
                out.append("{")
            continue
        if mode == "C":
            out.append(f"{b:02d}")
        elif mode:
            out.append(chr(b))
        i += 1
    return "".join(out)


# -- QR Code --------------------------------------------------------------------------------------

#: Byte-mode capacity of QR versions 1..10 per error correction level.
QR_BYTE_CAPACITY = {
    "L": (17, 32, 53, 78, 106, 134, 154, 192, 230, 271),
    "M": (14, 26, 42, 62, 84, 106, 122, 152, 180, 213),
    "Q": (11, 20, 32, 46, 60, 74, 86, 108, 130, 151),
    "H": (7, 14, 24, 34, 44, 58, 64, 84, 98, 119),
}
QR_EC_LEVELS = {"L": 48, "M": 49, "Q": 50, "H": 51}
QR_QUIET_MODULES = 4


def qr_version(length: int, ec: str) -> int | None:
    """Smallest QR version (1..10) holding ``length`` bytes, or None."""
    for version, capacity in enumerate(QR_BYTE_CAPACITY[ec], start=1):
        if length <= capacity:
            return version
    return None


def qr_modules(version: int) -> int:
    """Modules across a QR symbol of ``version``, without the quiet zone."""
    return 17 + 4 * version


def _qr_fn(fn: int, params: bytes) -> bytes:
    size = len(params) + 2
    return bytes([GS, ord("("), ord("k"), size & 0xFF, size >> 8, 49, fn]) + params


def cmd_qr(data: bytes, *, module: int, ec: str) -> bytes:
    """``GS ( k``: model 2, module size, error correction, store data, print."""
    return (
        _qr_fn(65, bytes([50, 0]))
        + _qr_fn(67, bytes([module]))
        + _qr_fn(69, bytes([QR_EC_LEVELS[ec]]))
        + _qr_fn(80, b"0" + data)
        + _qr_fn(81, b"0")
    )


# -- real-time status -----------------------------------------------------------------------------


def check_status_byte(value: int) -> int:
    """Validate a ``DLE EOT`` reply: bits 1 and 4 are fixed on, bits 0 and 7 fixed off."""
    if value & 0x93 != 0x12:
        raise InputError(f"0x{value:02x} is not a real-time status byte")
    return value


@dataclass(frozen=True)
class PrinterStatus:
    """What ``DLE EOT 1..4`` report."""

    online: bool = True
    drawer_pin3_high: bool = False
    cover_open: bool = False
    feed_button: bool = False
    paper_end_stop: bool = False
    error: bool = False
    cutter_error: bool = False
    unrecoverable_error: bool = False
    auto_recoverable_error: bool = False
    paper_near_end: bool = False
    paper_out: bool = False

    @classmethod
    def parse(cls, printer: int, offline: int, error: int, paper: int) -> PrinterStatus:
        """Decode the replies to ``DLE EOT`` 1, 2, 3 and 4; raises InputError on garbage."""
        for value in (printer, offline, error, paper):
            check_status_byte(value)
        return cls(
            online=not printer & 0x08,
            drawer_pin3_high=bool(printer & 0x04),
            cover_open=bool(offline & 0x04),
            feed_button=bool(offline & 0x08),
            paper_end_stop=bool(offline & 0x20),
            error=bool(offline & 0x40),
            cutter_error=bool(error & 0x08),
            unrecoverable_error=bool(error & 0x20),
            auto_recoverable_error=bool(error & 0x40),
            paper_near_end=bool(paper & 0x0C),
            paper_out=bool(paper & 0x60),
        )

    def to_bytes(self) -> bytes:
        """The four replies a printer in this state sends (for simulators)."""
        return bytes(
            [
                0x12 | (0x04 if self.drawer_pin3_high else 0) | (0 if self.online else 0x08),
                0x12 | (0x04 if self.cover_open else 0) | (0x08 if self.feed_button else 0)
                | (0x20 if self.paper_end_stop else 0) | (0x40 if self.error else 0),
                0x12 | (0x08 if self.cutter_error else 0) | (0x20 if self.unrecoverable_error else 0)
                | (0x40 if self.auto_recoverable_error else 0),
                0x12 | (0x0C if self.paper_near_end else 0) | (0x60 if self.paper_out else 0),
            ]
        )  # fmt: skip

    @property
    def problems(self) -> tuple[str, ...]:
        """Reasons the printer cannot print now, most specific first; empty when ready."""
        known_error = self.cutter_error or self.unrecoverable_error or self.auto_recoverable_error
        checks = (
            (self.paper_out or self.paper_end_stop, "paper out"),
            (self.cover_open, "cover open"),
            (self.cutter_error, "cutter error"),
            (self.unrecoverable_error, "unrecoverable printer error"),
            (self.auto_recoverable_error, "printer error (head overheated?)"),
            (self.error and not known_error, "printer error"),
        )
        found = [reason for flag, reason in checks if flag]
        if not self.online and not found:
            found.append("printer offline")
        return tuple(found)

    @property
    def ready(self) -> bool:
        return not self.problems


# -- profile and receipt --------------------------------------------------------------------------

Symbology = Literal["code128", "qr", "none"]


@dataclass(frozen=True)
class PrinterProfile:
    """How one printer is set up: paper, code page and how the sale reference is printed.

    ``columns`` and ``dots`` of 0 take the paper's defaults (58 mm: 32 columns on 384 dots;
    80 mm: 48 columns on 576 dots). ``code_table`` overrides the ``ESC t`` number.
    """

    paper_mm: int = 80
    code_page: str = "CP437"
    columns: int = 0
    dots: int = 0
    code_table: int | None = None
    symbology: Symbology = "code128"
    barcode_module: int = 3
    barcode_height: int = 80
    qr_module: int = 6
    qr_ec: Literal["L", "M", "Q", "H"] = "M"
    cut: Literal["partial", "full", "none"] = "partial"

    def __post_init__(self) -> None:
        if self.paper_mm not in PAPER_COLUMNS:
            raise DeviceMisconfigured(f"paper width {self.paper_mm} mm is not supported; use 58 or 80")
        columns = self.columns or PAPER_COLUMNS[self.paper_mm][0]
        if columns not in PAPER_COLUMNS[self.paper_mm]:
            allowed = " or ".join(map(str, PAPER_COLUMNS[self.paper_mm]))
            raise DeviceMisconfigured(f"{self.paper_mm} mm paper has {allowed} columns, not {columns}")
        object.__setattr__(self, "columns", columns)
        dots = self.dots or PRINTABLE_DOTS[self.paper_mm]
        if not columns * FONT_A_DOTS <= dots <= PRINTABLE_DOTS[self.paper_mm]:
            raise DeviceMisconfigured(f"{dots} printable dots do not fit {columns} columns on {self.paper_mm} mm")
        object.__setattr__(self, "dots", dots)
        code_page(self.code_page, self.code_table)
        if self.symbology not in ("code128", "qr", "none"):
            raise DeviceMisconfigured(f"unknown symbology {self.symbology!r}; use code128, qr or none")
        lo, hi = BARCODE_MODULE_RANGE
        if not lo <= self.barcode_module <= hi:
            raise DeviceMisconfigured(f"barcode module width {self.barcode_module} is out of range {lo}..{hi}")
        if not 1 <= self.barcode_height <= 255:
            raise DeviceMisconfigured(f"barcode height {self.barcode_height} is out of range 1..255")
        if not 1 <= self.qr_module <= 16:
            raise DeviceMisconfigured(f"QR module size {self.qr_module} is out of range 1..16")
        if self.qr_ec not in QR_EC_LEVELS:
            raise DeviceMisconfigured(f"QR error correction {self.qr_ec!r} is not one of L, M, Q, H")
        if self.cut not in ("partial", "full", "none"):
            raise DeviceMisconfigured(f"cut {self.cut!r} is not one of partial, full, none")

    @property
    def page(self) -> CodePage:
        return code_page(self.code_page, self.code_table)


class _Tape:
    """Accumulates receipt bytes; text goes through the code page, lines are cut to width."""

    def __init__(self, profile: PrinterProfile) -> None:
        self.width = profile.columns
        self.page = profile.page
        self.out = bytearray()

    def raw(self, data: bytes) -> None:
        self.out += data

    def line(self, text: str = "") -> None:
        self.out += printable(text, self.page)[: self.width].encode(self.page.codec) + b"\n"

    def wrapped(self, text: str, indent: str = "") -> None:
        clean = printable(text, self.page)
        parts = textwrap.wrap(
            clean, self.width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
        )
        for part in parts or [""]:
            self.line(part)

    def row(self, left: str, right: str) -> None:
        right = printable(right, self.page)[: self.width]
        space = self.width - len(right) - 1
        left = printable(left, self.page)
        self.line(f"{left[:space]:<{space}} {right}" if space > 0 else right)

    def columns(self, cells: Sequence[str], widths: Sequence[int]) -> None:
        """A table row: first cell left-aligned in the remaining width, others right-aligned."""
        first = max(0, self.width - sum(w + 1 for w in widths))
        text = printable(cells[0], self.page)[:first].ljust(first)
        for cell, w in zip(cells[1:], widths, strict=True):
            text += " " + printable(cell, self.page).rjust(w)
        self.line(text)

    def rule(self) -> None:
        self.line("-" * self.width)

    def emphasis(self, text: str, *, tall: bool = False) -> None:
        """A bold line, double height when ``tall``, wrapped to the width."""
        self.raw(cmd_bold(True) + (cmd_size(1, 2) if tall else b""))
        self.wrapped(text)
        self.raw((cmd_size(1, 1) if tall else b"") + cmd_bold(False))


def _qr_code(payload: bytes, profile: PrinterProfile) -> bytes:
    """A QR code of ``payload`` at the largest module size up to the profile's that fits; b"" if none."""
    version = qr_version(len(payload), profile.qr_ec)
    if version is None:
        return b""
    size = fit_module_width(qr_modules(version) + 2 * QR_QUIET_MODULES, profile.dots, profile.qr_module, minimum=1)
    return b"" if size is None else cmd_qr(payload, module=size, ec=profile.qr_ec)


def _symbol(reference: str, profile: PrinterProfile) -> bytes:
    """The barcode or QR code of the reference; b"" when none fits or none is wanted."""
    if profile.symbology == "code128":
        try:
            data, symbols = code128_data(reference)
        except InputError:
            pass
        else:
            modules = code128_modules(symbols) + 2 * CODE128_QUIET_MODULES
            width = fit_module_width(modules, profile.dots, profile.barcode_module)
            if width is not None:
                return cmd_code128(data, module=width, height=profile.barcode_height)
    if profile.symbology in ("code128", "qr"):
        return _qr_code(reference.encode("utf-8"), profile)
    return b""


def _lines(tape: _Tape, receipt: Receipt) -> None:
    money = receipt.currency.plain
    for ln in receipt.lines:
        if ln.voided:
            tape.row(f"{ln.name} (VOID)", money(0))
            continue
        if ln.unit == "kg":
            tape.line(ln.name)
            price = f" x {money(ln.unit_price)}/kg" if ln.unit_price else ""
            tape.row(f"  {ln.qty} kg{price}", money(ln.amount))
        elif ln.qty != "1":
            tape.line(ln.name)
            tape.row(f"  {ln.qty} x {money(ln.unit_price)}" if ln.unit_price else f"  qty {ln.qty}", money(ln.amount))
        else:
            tape.row(ln.name, money(ln.amount))
        if ln.note:
            tape.wrapped(ln.note, "  ")
        for reason in ln.reasons:
            tape.wrapped(f"* {reason}", "  ")
        if ln.discount:
            tape.row("  Discount", money(-ln.discount))


def _totals(tape: _Tape, receipt: Receipt) -> None:
    money = receipt.currency.plain
    if receipt.discount:
        tape.row("Subtotal", money(receipt.subtotal))
        tape.row("Discounts", money(-receipt.discount))
    if not receipt.prices_include_tax:
        tape.row("Net", money(receipt.net))
        tape.row("Tax", money(receipt.tax))
    tape.raw(cmd_bold(True) + cmd_size(1, 2))
    tape.row(f"TOTAL {receipt.currency.code}", money(receipt.total))
    tape.raw(cmd_size(1, 1) + cmd_bold(False))
    if receipt.rounding:
        tape.row("Cash rounding", money(receipt.rounding))
        tape.row("Rounded total", money(receipt.total + receipt.rounding))
    for t in receipt.tenders:
        tape.row(t.label, money(t.amount))
        if t.reference:
            tape.wrapped(f"ref {t.reference}", "  ")
    if receipt.change:
        tape.row("Change", money(receipt.change))


def _taxes(tape: _Tape, receipt: Receipt) -> None:
    if not receipt.taxes:
        return
    money = receipt.currency.plain
    rows = [(f"{r.percent}% {r.name}", money(r.taxable), money(r.tax)) for r in receipt.taxes]
    widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in ((1, "Net"), (2, "Tax"))]
    tape.columns(["Tax rate", "Net", "Tax"], widths)
    for row in rows:
        tape.columns(row, widths)


def render_receipt(receipt: Receipt, profile: PrinterProfile, *, logo: RasterImage | None = None) -> bytes:
    """The complete ESC/POS byte stream for a receipt (sale, return or reprinted copy).

    The reference is printed as CODE128 or a QR code as the profile asks and the paper
    allows; the digital receipt link as a QR code, or as text when the profile prints no
    codes or the link does not fit.
    """
    tape = _Tape(profile)
    tape.raw(INIT + cmd_code_table(profile.page.table) + cmd_align("center"))
    if logo is not None:
        if logo.width > profile.dots:
            raise DeviceMisconfigured(f"logo is {logo.width} dots wide; the paper takes {profile.dots}")
        tape.raw(cmd_raster(logo))
    if receipt.store_name:
        tape.emphasis(receipt.store_name, tall=True)
    for text in receipt.address:
        tape.wrapped(text)
    if receipt.tax_id:
        tape.wrapped(f"Tax ID {receipt.tax_id}")
    tape.line()
    tape.emphasis(receipt.title, tall=True)
    if receipt.copy:
        tape.emphasis(f"*** COPY {receipt.copy} ***")
    tape.raw(cmd_align("left"))
    tape.rule()
    _lines(tape, receipt)
    tape.rule()
    _totals(tape, receipt)
    tape.rule()
    _taxes(tape, receipt)
    tape.line()
    tape.raw(cmd_align("center"))
    tape.wrapped(f"No. {receipt.number}  {receipt.time}  {receipt.staff}".strip())
    tape.wrapped(f"Ref {receipt.reference}")
    tape.raw(_symbol(receipt.reference, profile))
    tape.line(f"J{receipt.journal_seq}:{receipt.hash_prefix}")
    if receipt.digital_url:
        tape.line()
        tape.line("Your receipt online:")
        qr = _qr_code(receipt.digital_url.encode("utf-8"), profile) if profile.symbology != "none" else b""
        tape.raw(qr)
        if not qr:  # cut into lines, not wrapped: a link has no word breaks
            link = printable(receipt.digital_url, tape.page)
            for start in range(0, len(link), tape.width):
                tape.line(link[start : start + tape.width])
    if receipt.footer:
        tape.line()
    for text in receipt.footer:
        tape.wrapped(text)
    tape.raw(cmd_align("left"))
    if profile.cut != "none":
        tape.raw(cmd_cut(partial=profile.cut == "partial"))
    else:
        tape.raw(cmd_feed(4))
    return bytes(tape.out)


# -- reading bytes back ---------------------------------------------------------------------------

_ONE_ARG_ESC = set(b"!-3EGJMRTUVadert{ ")
_ONE_ARG_GS = set(b"!BHLPWfhw")
_TABLES = {cp.table: cp for cp in CODE_PAGES.values()}


def _commands(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Split an ESC/POS stream into ("text", bytes), ("lf", b""), and (command name, args)."""
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == LF:
            yield "lf", b""
            i += 1
        elif b == ESC and i + 1 < n:
            c = data[i + 1]
            if c == ord("p"):
                yield "pulse", data[i + 2 : i + 5]
                i += 5
            elif c in _ONE_ARG_ESC:
                yield f"ESC {chr(c)}", data[i + 2 : i + 3]
                i += 3
            else:
                yield f"ESC {chr(c)}", b""
                i += 2
        elif b == GS and i + 1 < n:
            c = data[i + 1]
            if c == ord("v") and i + 7 < n:
                x, y = data[i + 4] | data[i + 5] << 8, data[i + 6] | data[i + 7] << 8
                yield "raster", data[i + 4 : i + 8 + x * y]
                i += 8 + x * y
            elif c == ord("k") and i + 2 < n:
                m = data[i + 2]
                if m <= 6:
                    end = data.find(b"\0", i + 3)
                    end = n if end < 0 else end
                    yield "barcode", bytes([m]) + data[i + 3 : end]
                    i = end + 1
                else:
                    size = data[i + 3] if i + 3 < n else 0
                    yield "barcode", bytes([m]) + data[i + 4 : i + 4 + size]
                    i += 4 + size
            elif c == ord("(") and i + 4 < n:
                size = data[i + 3] | data[i + 4] << 8
                yield f"GS ( {chr(data[i + 2])}", data[i + 5 : i + 5 + size]
                i += 5 + size
            elif c == ord("V"):
                m = data[i + 2] if i + 2 < n else 0
                yield "cut", data[i + 2 : i + 3]
                i += 4 if m in (65, 66, 97, 98, 103, 104) else 3
            elif c in _ONE_ARG_GS:
                yield f"GS {chr(c)}", data[i + 2 : i + 3]
                i += 3
            else:
                yield f"GS {chr(c)}", b""
                i += 2
        elif b == DLE and i + 1 < n:
            yield "status", data[i + 2 : i + 3] if data[i + 1] == 0x04 else b""
            i += 3 if data[i + 1] == 0x04 else 2
        elif b < 0x20 or b == 0x7F:
            i += 1
        else:
            j = i
            while j < n and data[j] >= 0x20 and data[j] != 0x7F:
                j += 1
            yield "text", data[i:j]
            i = j


def to_text(data: bytes, columns: int = 0) -> str:
    """Render an ESC/POS stream as plain text; images, codes and cuts become [markers].

    With ``columns``, centred and right-aligned lines are padded as on paper.
    """
    page = CODE_PAGES["CP437"]
    align = 0
    lines: list[str] = []
    current: list[str] = []
    qr_store = b""

    def flush(force: bool = True) -> None:
        if not current and not force:
            return
        text = "".join(current)
        if columns and align == 1:
            text = text.center(columns).rstrip()
        elif columns and align == 2:
            text = text.rjust(columns)
        lines.append(text)
        current.clear()

    for kind, args in _commands(data):
        if kind == "text":
            current.append(args.decode(page.codec, errors="replace"))
        elif kind == "lf":
            flush()
        elif kind == "ESC @":
            page, align = CODE_PAGES["CP437"], 0
        elif kind == "ESC t" and args:
            page = _TABLES.get(args[0], page)
        elif kind == "ESC a" and args:
            align = args[0] % 48
        elif kind == "ESC d" and args:
            feed = args[0]
            if current:
                flush()
                feed -= 1
            lines.extend([""] * max(0, feed))
        elif kind == "raster" and len(args) >= 4:
            lines.append(f"[IMAGE {(args[0] | args[1] << 8) * 8}x{args[2] | args[3] << 8}]")
        elif kind == "barcode" and args:
            label = "CODE128 " + decode_code128(args[1:]) if args[0] == 73 else f"BARCODE {args[1:].decode('latin-1')}"
            lines.append(f"[{label}]")
        elif kind == "GS ( k" and len(args) >= 2 and args[0] == 49:
            if args[1] == 80:
                qr_store = args[3:]
            elif args[1] == 81:
                lines.append(f"[QR {qr_store.decode('utf-8', errors='replace')}]")
        elif kind == "cut":
            flush(force=False)
            lines.append("[CUT]")
        elif kind == "pulse" and len(args) == 3:
            lines.append(f"[DRAWER pin {5 if args[0] % 48 else 2}, {args[1] * 2} ms]")
    flush(force=False)
    return "\n".join(lines) + "\n"
