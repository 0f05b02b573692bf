"""File names a program chose, as a caller sees them and names them back. Pure.

Linux names are bytes; MCP speaks UTF-8. Inside agent-sandbox a name is a ``str`` in which each
byte that is not UTF-8 is a lone surrogate (Python's ``surrogateescape``, as ``os.listdir`` and
``tarfile`` give it). Shown to a caller, such a byte is written ``\\xHH`` and a backslash
``\\\\``: two names never look alike, and every shown name leads back to exactly one file.
"""

from __future__ import annotations

import re

_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # surrogateescape's stand-ins for the bytes 0x80-0xff
_ESCAPE = re.compile(r"\\(?:(\\)|x([89a-f][0-9a-f]))|\\")


def shown_name(name: str) -> str:
    """``name`` as valid UTF-8 text, every byte of it recoverable."""
    return "".join(
        "\\\\" if char == "\\" else f"\\x{ord(char) - 0xDC00:02x}" if ord(char) in _ESCAPED_BYTES else char
        for char in name
    )


def name_from_shown(shown: str) -> str:
    """The name ``shown_name`` showed as ``shown``; ValueError for a backslash that starts neither
    ``\\\\`` nor ``\\xHH`` (HH from 80 to ff, lower case)."""

    def unescape(match: re.Match[str]) -> str:
        if match[1]:
            return "\\"
        if match[2]:
            return chr(0xDC00 + int(match[2], 16))
        raise ValueError(
            f"{shown!r} has a backslash that is not part of \\\\ (a backslash) or \\xHH (a byte "
            "that is not UTF-8); copy the name exactly as it was listed"
        )

    return _ESCAPE.sub(unescape, shown)
