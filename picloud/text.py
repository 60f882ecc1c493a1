"""Text helpers shared by every layer."""


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, marked with "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
