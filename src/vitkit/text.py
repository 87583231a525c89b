"""Text from data, shown on a terminal as text.

Class names, folder names and file names come from strangers. Printed raw, an escape sequence in
one (`\\x1b]0;...\\x07`) retitles the window or recolours the screen, a carriage return or a newline
forges another line of output, and a right-to-left override reverses what follows. Every such
character is shown as its Python escape instead (`\\x1b`, `\\n`, `\\u202e`), so what reaches the
terminal is exactly what was in the data, visibly.
"""

from __future__ import annotations

import unicodedata

# Control (Cc), format (Cf: bidirectional overrides, zero-width characters), line and paragraph
# separators (Zl, Zp), and unassigned or surrogate code points (Cn, Cs).
_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cn", "Cs"}


def printable(text: str) -> str:
    """`text` with every character a terminal would act on or hide replaced by its escape."""
    return "".join(
        ascii(char)[1:-1] if unicodedata.category(char) in _HIDDEN else char for char in text
    )
