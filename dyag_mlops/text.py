"""Text normalisation shared by dataset generation, retrieval and metrics."""

from __future__ import annotations

import re
import unicodedata


def normalise(text: str) -> str:
    """Lowercase, accents stripped, punctuation as spaces, single spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())
