"""Keyboard layouts for keyboard-wedge devices (barcode scanners, badge readers).

A wedge device "types" its data as USB HID key presses; the characters it means
depend on the keyboard layout it was configured for. :class:`KeyTranslator` turns
Linux key codes (``linux/input-event-codes.h``; stable kernel ABI, so written out
here and importable without evdev) back into text for one :class:`Layout`.

Supported: Shift, CapsLock, AltGr (right Alt, or Ctrl+Alt as Windows-minded scanners
send it), Ctrl+key control characters (GS for GS1 FNC1), Alt+keypad decimal codes
("ALT mode"), and dead keys resolved by the following Space (a dead key followed by
anything else yields the accent and that character, uncomposed). The keypad always
yields digits (wedge devices in keypad mode assume NumLock on).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from appliance.errors import ConfigError

__all__ = [
    "DE",
    "KEY_ENTER",
    "KEY_KPENTER",
    "KEY_TAB",
    "LAYOUTS",
    "US",
    "KeyTranslator",
    "Layout",
    "get_layout",
]

# Key codes from linux/input-event-codes.h.
KEY_ESC = 1
KEY_1, KEY_2, KEY_3, KEY_4, KEY_5, KEY_6, KEY_7, KEY_8, KEY_9, KEY_0 = range(2, 12)
KEY_MINUS = 12
KEY_EQUAL = 13
KEY_BACKSPACE = 14
KEY_TAB = 15
KEY_Q, KEY_W, KEY_E, KEY_R, KEY_T, KEY_Y, KEY_U, KEY_I, KEY_O, KEY_P = range(16, 26)
KEY_LEFTBRACE = 26
KEY_RIGHTBRACE = 27
KEY_ENTER = 28
KEY_LEFTCTRL = 29
KEY_A, KEY_S, KEY_D, KEY_F, KEY_G, KEY_H, KEY_J, KEY_K, KEY_L = range(30, 39)
KEY_SEMICOLON = 39
KEY_APOSTROPHE = 40
KEY_GRAVE = 41
KEY_LEFTSHIFT = 42
KEY_BACKSLASH = 43
KEY_Z, KEY_X, KEY_C, KEY_V, KEY_B, KEY_N, KEY_M = range(44, 51)
KEY_COMMA = 51
KEY_DOT = 52
KEY_SLASH = 53
KEY_RIGHTSHIFT = 54
KEY_KPASTERISK = 55
KEY_LEFTALT = 56
KEY_SPACE = 57
KEY_CAPSLOCK = 58
KEY_KP7, KEY_KP8, KEY_KP9 = 71, 72, 73
KEY_KPMINUS = 74
KEY_KP4, KEY_KP5, KEY_KP6 = 75, 76, 77
KEY_KPPLUS = 78
KEY_KP1, KEY_KP2, KEY_KP3 = 79, 80, 81
KEY_KP0 = 82
KEY_KPDOT = 83
KEY_102ND = 86
KEY_KPENTER = 96
KEY_RIGHTCTRL = 97
KEY_KPSLASH = 98
KEY_RIGHTALT = 100

KEYPAD_DIGITS: Mapping[int, str] = MappingProxyType(
    {
        KEY_KP0: "0", KEY_KP1: "1", KEY_KP2: "2", KEY_KP3: "3", KEY_KP4: "4",
        KEY_KP5: "5", KEY_KP6: "6", KEY_KP7: "7", KEY_KP8: "8", KEY_KP9: "9",
    }
)  # fmt: skip
_KEYPAD_OTHER: Mapping[int, str] = MappingProxyType(
    {KEY_KPSLASH: "/", KEY_KPASTERISK: "*", KEY_KPMINUS: "-", KEY_KPPLUS: "+", KEY_KPENTER: "\n"}
)
_SHIFT = frozenset({KEY_LEFTSHIFT, KEY_RIGHTSHIFT})
_CTRL = frozenset({KEY_LEFTCTRL, KEY_RIGHTCTRL})
_CONTROL_BASE = "@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_"

_TOP_ROW = (KEY_1, KEY_2, KEY_3, KEY_4, KEY_5, KEY_6, KEY_7, KEY_8, KEY_9, KEY_0)
_LETTER_ROWS = (
    (KEY_Q, KEY_W, KEY_E, KEY_R, KEY_T, KEY_Y, KEY_U, KEY_I, KEY_O, KEY_P),
    (KEY_A, KEY_S, KEY_D, KEY_F, KEY_G, KEY_H, KEY_J, KEY_K, KEY_L),
    (KEY_Z, KEY_X, KEY_C, KEY_V, KEY_B, KEY_N, KEY_M),
)

#: (normal, shifted, AltGr) characters of one key; "" where the level produces nothing.
Levels = tuple[str, str, str]


@dataclass(frozen=True, eq=False)
class Layout:
    """What each key types on one keyboard layout."""

    name: str
    keys: Mapping[int, Levels]
    #: Characters that are dead keys (they wait for the next key).
    dead: frozenset[str] = frozenset()
    #: True when right Alt is AltGr (a third level); False makes it a plain Alt.
    altgr: bool = False
    #: What the keypad decimal key types.
    keypad_decimal: str = "."
    #: Lower-case letters whose case CapsLock flips (derived from ``keys``).
    caps: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        caps = frozenset(code for code, (low, up, _) in self.keys.items() if low.isalpha() and up == low.upper())
        object.__setattr__(self, "caps", caps)

    def char(self, code: int, *, shift: bool, altgr: bool) -> str:
        """The character a key types with these modifiers ("" if none)."""
        levels = self.keys.get(code)
        if levels is None:
            if code == KEY_KPDOT:
                return self.keypad_decimal
            return KEYPAD_DIGITS.get(code) or _KEYPAD_OTHER.get(code, "")
        if altgr:
            return levels[2]
        return levels[1] if shift else levels[0]


def _keys(
    letters: tuple[str, str, str],
    top: tuple[str, str],
    other: Mapping[int, Levels],
    altgr: Mapping[int, str] = MappingProxyType({}),
) -> Mapping[int, Levels]:
    """Build a key table from the letter rows, the shifted top row and the other keys."""
    table: dict[int, Levels] = {}
    for row, chars in zip(_LETTER_ROWS, letters, strict=True):
        for code, ch in zip(row, chars, strict=True):
            table[code] = (ch, ch.upper(), "")
    for code, low, up in zip(_TOP_ROW, top[0], top[1], strict=True):
        table[code] = (low, up, "")
    table.update(other)
    table[KEY_SPACE] = (" ", " ", " ")
    table[KEY_TAB] = ("\t", "\t", "")
    table[KEY_ENTER] = ("\n", "\n", "")
    for code, ch in altgr.items():
        low, up, _ = table[code]
        table[code] = (low, up, ch)
    return MappingProxyType(table)


#: US English (ANSI/ISO), what most scanners default to.
US = Layout(
    "us",
    _keys(
        ("qwertyuiop", "asdfghjkl", "zxcvbnm"),
        ("1234567890", "!@#$%^&*()"),
        {
            KEY_MINUS: ("-", "_", ""),
            KEY_EQUAL: ("=", "+", ""),
            KEY_LEFTBRACE: ("[", "{", ""),
            KEY_RIGHTBRACE: ("]", "}", ""),
            KEY_SEMICOLON: (";", ":", ""),
            KEY_APOSTROPHE: ("'", '"', ""),
            KEY_GRAVE: ("`", "~", ""),
            KEY_BACKSLASH: ("\\", "|", ""),
            KEY_COMMA: (",", "<", ""),
            KEY_DOT: (".", ">", ""),
            KEY_SLASH: ("/", "?", ""),
            KEY_102ND: ("\\", "|", ""),
        },
    ),
)

#: German QWERTZ (Y/Z swapped, umlauts, ß; ^ ´ ` are dead keys).
DE = Layout(
    "de",
    _keys(
        ("qwertzuiop", "asdfghjkl", "yxcvbnm"),
        ("1234567890", '!"§$%&/()='),
        {
            KEY_MINUS: ("ß", "?", ""),
            KEY_EQUAL: ("´", "`", ""),
            KEY_LEFTBRACE: ("ü", "Ü", ""),
            KEY_RIGHTBRACE: ("+", "*", ""),
            KEY_SEMICOLON: ("ö", "Ö", ""),
            KEY_APOSTROPHE: ("ä", "Ä", ""),
            KEY_GRAVE: ("^", "°", ""),
            KEY_BACKSLASH: ("#", "'", ""),
            KEY_COMMA: (",", ";", ""),
            KEY_DOT: (".", ":", ""),
            KEY_SLASH: ("-", "_", ""),
            KEY_102ND: ("<", ">", ""),
        },
        {
            KEY_Q: "@",
            KEY_E: "€",
            KEY_M: "µ",
            KEY_2: "²",
            KEY_3: "³",
            KEY_7: "{",
            KEY_8: "[",
            KEY_9: "]",
            KEY_0: "}",
            KEY_MINUS: "\\",
            KEY_RIGHTBRACE: "~",
            KEY_102ND: "|",
        },
    ),
    dead=frozenset("^´`"),
    altgr=True,
    keypad_decimal=",",
)

LAYOUTS: Mapping[str, Layout] = MappingProxyType({layout.name: layout for layout in (US, DE)})


def get_layout(name: str) -> Layout:
    """The layout called ``name``; ConfigError (with a suggestion) if unknown."""
    layout = LAYOUTS.get(name.strip().lower())
    if layout is not None:
        return layout
    close = difflib.get_close_matches(name.lower(), list(LAYOUTS), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown keyboard layout '{name}' (known: {', '.join(sorted(LAYOUTS))}){hint}")


class KeyTranslator:
    """Keyboard state for one device: feed key events, get the text they type.

    ``value`` follows evdev: 1 press, 0 release, 2 autorepeat (ignored here).
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.reset()

    def reset(self) -> None:
        """Forget held modifiers, CapsLock, a pending dead key and Alt digits."""
        self._shift: set[int] = set()
        self._ctrl: set[int] = set()
        self._alt = False
        self._altgr = False
        self._caps = False
        self._alt_digits = ""
        self._dead = ""

    def flush(self) -> str:
        """Text still held back (a dead key waiting for its next key)."""
        text, self._dead = self._dead, ""
        return text

    @property
    def composing(self) -> bool:
        """True while an Alt+keypad code is being entered."""
        return self._alt

    def key(self, code: int, value: int) -> str:
        """Process one key event; return the text it typed ("" for none)."""
        if value not in (0, 1):
            return ""
        down = value == 1
        if code in _SHIFT:
            (self._shift.add if down else self._shift.discard)(code)
            return ""
        if code in _CTRL:
            (self._ctrl.add if down else self._ctrl.discard)(code)
            return ""
        if code == KEY_LEFTALT or (code == KEY_RIGHTALT and not self.layout.altgr):
            return self._alt_key(down)
        if code == KEY_RIGHTALT:
            self._altgr = down
            return ""
        if not down:
            return ""
        if code == KEY_CAPSLOCK:
            self._caps = not self._caps
            return ""
        if self._alt and not self._ctrl:
            if code in KEYPAD_DIGITS:
                self._alt_digits += KEYPAD_DIGITS[code]
            return ""
        return self._typed(code)

    def _alt_key(self, down: bool) -> str:
        if down:
            self._alt, self._alt_digits = True, ""
            return ""
        self._alt = False
        digits, self._alt_digits = self._alt_digits, ""
        if not digits:
            return ""
        number = int(digits) % 256  # Windows wraps Alt codes above 255
        if number < 128:
            ch = chr(number)
        else:  # a leading 0 selects the ANSI code page, none the OEM one
            ch = bytes([number]).decode("cp1252" if digits.startswith("0") else "cp437", errors="replace")
        return self._dead_then(ch)

    def _typed(self, code: int) -> str:
        altgr = self.layout.altgr and (self._altgr or (self._alt and bool(self._ctrl)))
        shift = bool(self._shift)
        if code in self.layout.caps and self._caps:
            shift = not shift
        ch = self.layout.char(code, shift=shift, altgr=altgr)
        if self._ctrl and not altgr:
            return self._dead_then(self._control(code, ch, shift=bool(self._shift)))
        if not ch:
            return ""
        if self._dead:
            dead, self._dead = self._dead, ""
            return dead if ch == " " else dead + ch
        if ch in self.layout.dead:
            self._dead = ch
            return ""
        return ch

    @staticmethod
    def _control(code: int, ch: str, *, shift: bool) -> str:
        """Ctrl+key: the control character of a letter, else of the key's US position."""
        candidates = [ch] if ch.isascii() and ch.isalpha() else []
        candidates += [US.char(code, shift=shift, altgr=False), US.char(code, shift=False, altgr=False)]
        for base in candidates:
            if len(base) == 1 and base.upper() in _CONTROL_BASE:
                return chr(ord(base.upper()) - 64)
        return ""

    def _dead_then(self, text: str) -> str:
        dead, self._dead = self._dead, ""
        return dead + text
