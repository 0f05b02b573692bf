"""File names a program chose, as a caller sees them and names them back. Pure.

Linux names are bytes; MCP speaks UTF-8. Inside agent-sandbox a name is a ``str`` in which each
byte that is not UTF-8 is a lone surrogate (Python's ``surrogateescape``, as ``os.listdir`` and
``tarfile`` give it). Shown to a caller, such a byte is written ``\\xHH``, and so is a control
character (a newline, a tab, an escape); a backslash is ``\\\\``. So a shown name is one line of
valid UTF-8, two names never look alike, and every shown name leads back to exactly one file.
"""

from __future__ import annotations

import re

_SURROGATE_BASE = 0xDC00  # surrogateescape's stand-in for byte B is U+DC00 + B (B from 0x80)
_CONTROLS = frozenset((*range(0x20), 0x7F))
_ESCAPE = re.compile(r"\\(?:(\\)|x([0-9a-f]{2}))|\\")


def shown_name(name: str) -> str:
    """``name`` as one line of valid UTF-8 text, every byte of it recoverable."""
    return "".join(_shown(char) for char in name)


def _shown(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code in _CONTROLS:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - _SURROGATE_BASE:02x}"
    return char


def name_from_shown(shown: str) -> str:
    """The name ``shown_name`` showed as ``shown``; ValueError for a backslash that starts
    neither ``\\\\`` nor ``\\xHH`` as ``shown_name`` writes it."""

    def unescape(match: re.Match[str]) -> str:
        if match[1]:
            return "\\"
        code = int(match[2], 16) if match[2] else None
        if code is not None and code in _CONTROLS:
            return chr(code)
        if code is not None and code >= 0x80:
            return chr(_SURROGATE_BASE + code)
        raise ValueError(
            f"{shown!r} has a backslash that is not part of \\\\ (a backslash) or \\xHH (a control "
            "character, or a byte that is not UTF-8); copy the name exactly as it was listed"
        )

    return _ESCAPE.sub(unescape, shown)
