"""Text a task or a job body controls, made safe to print on an operator's terminal.

A task's output, its arguments, a batch's name or a buried body can hold escape sequences that set the
window title, move the cursor or rewrite a line already printed. Every text (non-`--json`) formatter of the
CLI passes such text through `visible`, which writes each character that does not print as itself as a
Python-style escape: `\\x1b`, `\\r`, `\\x85`, `\\u202e`, `\\U000e0001`. `--json` prints the stored text exactly.
"""

from __future__ import annotations

import unicodedata

# Categories that do not print as themselves: controls (C0, DEL, C1), format characters (among them the bidi
# overrides and isolates U+202A-U+202E and U+2066-U+2069, zero-width spaces, the BOM), the line and paragraph
# separators U+2028 and U+2029, and lone surrogates (which no terminal encoding can even write).
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Joiners stay: emoji sequences and several scripts need them to render, and they move nothing.
JOINERS = frozenset({"\u200c", "\u200d"})


def visible(text: str, *, multiline: bool = True) -> str:
    """`text` with every non-printing character escaped, except tab and (when `multiline`) newline.

    A one-line field (a command line, a reason, a name) passes `multiline=False`, so a newline in it cannot
    start a line that looks like another field."""
    kept = "\n\t" if multiline else "\t"
    if text.isprintable():  # the common case, checked in C (newline and tab are not printable)
        return text
    return "".join(char if char in kept or not _hidden(char) else _escape(char) for char in text)


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in HIDDEN_CATEGORIES and char not in JOINERS


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def one_line(value: object) -> str:
    """`str(value)` made visible as one line: for a field, a reason or a name."""
    return visible(str(value), multiline=False)
