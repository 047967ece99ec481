r"""Text for the page: HTML-escaped, with each bidirectional control character written as a
visible mark, so no id or text can reorder what is shown around it (an id
"invoice\u202egnp.exe" would read "invoiceexe.png"). report.js's esc() does the same."""

from __future__ import annotations

import html
import re

# Arabic letter mark, LRM/RLM, the embeddings and overrides (LRE..RLO) and isolates (LRI..PDI):
# the characters of "Trojan Source" (CVE-2021-42574) and the marks next to them
BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """The text with each bidirectional control as <U+202E>."""
    return BIDI.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def escape(text: str, quote: bool = True) -> str:
    """html.escape of the text with its bidirectional controls made visible."""
    return html.escape(visible(str(text)), quote)
