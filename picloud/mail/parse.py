"""An inbound email's raw bytes turned into the event a tenant's script receives.

Mail from outside is often malformed and sometimes hostile, and a message
the SMTP server accepted must still reach its triggers. So nothing here
raises for any input: a header or part that cannot be read is left out and
named in ``defects``, the rest is kept. The event is JSON PostgreSQL can
store (no NUL, no lone surrogate) and fits the caller's byte budget: the
bodies are cut first, then the header and attachment lists. Attachments are
listed by size and digest only; ``attachment`` re-parses the message to hand
over one's content.

``truncated["headers"]`` is set when anything read from the headers was cut
(the header list, a value, an address list or References).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import EmailPolicy
from io import BytesIO
from typing import Any

from picloud.db.storable import clean_json, clean_text

MAX_HEADERS = 200  # header fields kept in the event
MAX_HEADER_CHARS = 2_000  # characters kept of one header value
MAX_ATTACHMENTS = 100  # attachments listed in the event
MAX_DEFECTS = 50  # defect names kept in the event
MIN_EVENT_BYTES = 16_384  # the smallest budget a caller may give (bytes of JSON)
MAX_PARTS = 1_000  # MIME parts examined; the rest of a message is not looked at
MAX_BOUNDARY_LINES = 4 * MAX_PARTS  # lines starting "--" past which the body is not parsed
# Deeper messages are read as headers only. The stdlib parses and writes
# nested parts by recursion, and what it manages near the stack's limit
# depends on the caller's depth: attachment() must see what parse_message saw.
MAX_DEPTH = 50  # levels of parts in parts (attached messages count)
MAX_REFERENCES = 100  # message ids kept from References (the first and the latest)
# The stdlib's modern header parser is slow on hostile input (a 100 kB To
# header of quotes took a minute, deep comment nesting exhausts the stack),
# so it never sees more than these of one value.
MAX_PARSED_CHARS = 2_000  # characters of one header value given to the parser
MAX_PARSED_COMMENTS = 100  # "(" in one header value given to the parser
MAX_ADDRESS_CHARS = 500  # characters of one address (display name included)
MAX_ADDRESS_FIELD_CHARS = 20_000  # characters read of all To (or Cc, ...) headers together
SHRUNK_CHARS = 100  # characters left of a one-string field when nothing else could be cut

# Sizes as PostgreSQL writes the event's jsonb out (a space after each ','
# and ':'), which is what the sandbox's payload cap measures of a row.
_ENCODER = json.JSONEncoder(ensure_ascii=False)
_REGISTRY = HeaderRegistry()
_UNSTRUCTURED = _REGISTRY["x-unstructured"]
_DATE = _REGISTRY["date"]
_ADDRESS_LIST = _REGISTRY["to"]
# Punycode decodes in quadratic time, and no mail body is written in it.
_REFUSED_CODECS = frozenset({"punycode"})
_MESSAGE_ID = re.compile(r"<[^<>]*>")


class _Policy(EmailPolicy):
    """The modern policy made safe for hostile headers: each value is bounded
    before parsing and parsed once per message, and a value that fails to
    parse reads as empty (its name noted) instead of failing whatever asked
    for it, the MIME parser included."""

    unparsable: list[str] | None = None  # names of the headers that failed
    parsed: dict[tuple[str, str], Any] | None = None  # (name, value) -> header object

    def header_fetch_parse(self, name, value):
        if hasattr(value, "name"):  # already a header object
            return value
        value = str(value)[:MAX_PARSED_CHARS]
        key = (name.lower(), value)
        if self.parsed is not None and key in self.parsed:
            return self.parsed[key]
        header = self._parsed_or_empty(name, value)
        if self.parsed is not None:
            self.parsed[key] = header
        return header

    def _parsed_or_empty(self, name, value):
        try:
            # Comments nest by recursion: refused before they reach the
            # stack's limit, where failing would depend on the caller's depth.
            if value.count("(") <= MAX_PARSED_COMMENTS:
                return super().header_fetch_parse(name, value)
        except Exception:
            pass
        if self.unparsable is not None:
            self.unparsable.append(name)
        return super().header_fetch_parse(name, "")


# Attached messages are written back as they came: no header refolded, CRLF
# line ends (the parser keeps no copy of the original bytes).
_SERIALIZING = policy.default.clone(linesep="\r\n", refold_source="none")


@dataclass(frozen=True)
class Attachment:
    """One attachment's decoded content, as ``attachment`` hands it over."""

    index: int
    filename: str | None
    content_type: str
    content: bytes


@dataclass
class _Layout:
    """A message's leaf parts sorted into its two bodies and its attachments."""

    text: Message | None = None
    html: Message | None = None
    attachments: list[tuple[Message, str]] = field(default_factory=list)  # (part, content type)
    parts_cut: bool = False  # more than MAX_PARTS parts


def parse_message(raw: bytes, *, max_event_bytes: int) -> dict:
    """The event for the message `raw`, at most `max_event_bytes` bytes as
    jsonb text (UTF-8, a space after each ',' and ':'). Never raises for any bytes; ValueError for a budget
    under MIN_EVENT_BYTES (the caller's bug)."""
    if max_event_bytes < MIN_EVENT_BYTES:
        raise ValueError(f"max_event_bytes must be at least {MIN_EVENT_BYTES}")
    raw = bytes(raw)
    try:
        event = _event(raw)
        event, _ = clean_json(event)
        _fit(event, max_event_bytes)
    except Exception as exc:  # a bug here must not lose the message
        event = _empty_event()
        event["defects"] = [f"internal error: {type(exc).__name__}"]
    if _json_size(event) > max_event_bytes:  # cannot happen; the budget is a promise
        event = _empty_event()
        event["defects"] = ["internal error: over budget"]
    return event


def attachment(raw: bytes, index: int) -> Attachment | None:
    """The attachment numbered `index` in parse_message's list for `raw`
    (also those past MAX_ATTACHMENTS), or None when there is none."""
    if index < 0:
        return None
    msg, _ = _parse(bytes(raw))
    layout = _layout(msg, [])
    if index >= len(layout.attachments):
        return None
    part, content_type = layout.attachments[index]
    # Named as parse_message lists it: storable text (NUL and surrogates replaced).
    filename = _filename(part, [])
    return Attachment(
        index,
        None if filename is None else clean_text(filename)[0],
        clean_text(content_type)[0],
        _content(part, []),
    )


# --- Reading the message -------------------------------------------------------


def _empty_event() -> dict[str, Any]:
    return {
        "from": None,
        "to": [],
        "cc": [],
        "reply_to": [],
        "subject": "",
        "date": None,
        "message_id": None,
        "in_reply_to": None,
        "references": [],
        "auto_submitted": None,
        "text": None,
        "html": None,
        "headers": [],
        "attachments": [],
        "truncated": {"text": False, "html": False, "headers": False, "attachments": False},
        "defects": [],
    }


def _event(raw: bytes) -> dict[str, Any]:
    msg, notes = _parse(raw)
    event = _empty_event()
    cut = event["truncated"]
    senders = _addresses(msg, "from", notes, cut, limit=1)
    event["from"] = senders[0] if senders else None
    event["to"] = _addresses(msg, "to", notes, cut)
    event["cc"] = _addresses(msg, "cc", notes, cut)
    event["reply_to"] = _addresses(msg, "reply-to", notes, cut)
    event["subject"] = _subject(msg, notes, cut)
    event["date"] = _date(msg, notes)
    event["message_id"] = _plain(msg, "message-id", cut)
    event["in_reply_to"] = _plain(msg, "in-reply-to", cut)
    event["references"] = _references(msg, cut)
    auto = _plain(msg, "auto-submitted", cut)
    event["auto_submitted"] = auto.lower() if auto else None
    event["headers"] = _header_list(msg, notes, cut)
    layout = _layout(msg, notes)
    event["text"] = _body(layout.text, notes)
    event["html"] = _body(layout.html, notes)
    event["attachments"] = _attachment_list(layout, notes)
    cut["attachments"] = len(layout.attachments) > MAX_ATTACHMENTS or layout.parts_cut
    # Last: decoding payloads registers the defects it finds on their parts.
    event["defects"] = _defects(msg, notes)
    return event


def _parse(raw: bytes) -> tuple[Message, list[str]]:
    """The parsed message and the notes of what went wrong. When the body
    defeats the parser or nests deeper than MAX_DEPTH, the headers alone,
    with the body as one part."""
    notes: list[str] = []
    # Its own list per parse; the message and its parts share the policy.
    bounded = _Policy(header_factory=_REGISTRY, unparsable=[], parsed={})
    parser = BytesParser(policy=bounded)
    try:
        # The parser builds every part before any limit here is checked,
        # and a part costs it a boundary line: 100,000 nested or tiny
        # parts took it 15 to 25 seconds. Counting the lines first is cheap.
        if raw.count(b"\n--") > MAX_BOUNDARY_LINES:
            notes.append(f"more than {MAX_BOUNDARY_LINES} MIME boundary lines: body not parsed")
        else:
            msg = parser.parsebytes(raw)
            if _depth(msg) <= MAX_DEPTH:
                return msg, notes
            notes.append(f"MIME parts nested deeper than {MAX_DEPTH}")
    except Exception as exc:
        notes.append(f"unparsable MIME structure: {type(exc).__name__}")
    # Nothing the failed parse learnt of its headers is kept: how far it got
    # before the stack ran out depends on the caller's own depth.
    bounded.unparsable.clear()
    bounded.parsed.clear()
    try:
        return parser.parsebytes(raw, headersonly=True), notes
    except Exception:
        return EmailMessage(policy=bounded), notes


def _depth(msg: Message) -> int:
    """How deep parts nest in `msg` (1: no parts)."""
    deepest = 0
    stack = [(msg, 1)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        if part.is_multipart():
            stack.extend((p, depth + 1) for p in part.get_payload() if isinstance(p, Message))
    return deepest


def _raw_values(msg: Message, name: str) -> list[str]:
    """The unparsed values of every `name` header, unfolded."""
    values = []
    for key, value in msg.raw_items():
        if key.lower() == name:
            values.append(_unfold(str(value)))
    return values


def _first_raw(msg: Message, name: str) -> str | None:
    values = _raw_values(msg, name)
    return values[0] if values else None


def _unfold(value: str) -> str:
    # As the stdlib does: folding leaves the whitespace after the line break.
    return value.replace("\r", "").replace("\n", "")


def _utf8(text: str) -> str:
    """`text` with the 8-bit bytes the parser kept as surrogates read as
    UTF-8 (RFC 6532 headers), so they are not lost as U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return text  # a surrogate not made by the parser; cleaned later


def _printable(text: str, limit: int = 80) -> str:
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:limit])


def _capped(value: str, cut: dict[str, bool]) -> str:
    if len(value) > MAX_HEADER_CHARS:
        cut["headers"] = True
        return value[:MAX_HEADER_CHARS]
    return value


def _decoded(name: str, value: str, notes: list[str]) -> tuple[str, bool]:
    """A header value as text (RFC 2047 encoded words decoded), at most
    MAX_HEADER_CHARS, and whether it was cut."""
    was_cut = len(value) > MAX_HEADER_CHARS
    value = value[:MAX_HEADER_CHARS]
    if value.isascii() and "=?" not in value:
        return value, was_cut  # nothing to decode; most headers are like this
    try:
        text = str(_UNSTRUCTURED(name, value))
    except Exception:
        notes.append(f"unparsable header: {_printable(name)}")
        text = _utf8(value)
    return text[:MAX_HEADER_CHARS], was_cut or len(text) > MAX_HEADER_CHARS


def _subject(msg: Message, notes: list[str], cut: dict[str, bool]) -> str:
    raw = _first_raw(msg, "subject")
    if raw is None:
        return ""
    text, was_cut = _decoded("Subject", raw, notes)
    cut["headers"] |= was_cut
    return text


def _plain(msg: Message, name: str, cut: dict[str, bool]) -> str | None:
    """A header that holds ids or keywords, not prose: kept as written."""
    raw = _first_raw(msg, name)
    value = _utf8(raw).strip() if raw is not None else ""
    return _capped(value, cut) if value else None


def _references(msg: Message, cut: dict[str, bool]) -> list[str]:
    raw = _first_raw(msg, "references")
    if raw is None:
        return []
    value = _utf8(raw)
    ids = _MESSAGE_ID.findall(value) or value.split()
    if len(ids) > MAX_REFERENCES:
        # The first is the thread's root and the last the parent: keep both ends.
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1) :]
        cut["headers"] = True
    return [_capped(i, cut) for i in ids]


def _date(msg: Message, notes: list[str]) -> str | None:
    raw = _first_raw(msg, "date")
    if raw is None:
        return None
    try:
        when = _DATE("Date", raw[:MAX_PARSED_CHARS]).datetime
        if when is not None:
            # -0000 means "offset unknown" (RFC 5322), read here as UTC.
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
    except Exception:
        pass
    notes.append("unparsable header: Date")
    return None


def _addresses(
    msg: Message, name: str, notes: list[str], cut: dict[str, bool], limit: int | None = None
) -> list[dict[str, str]]:
    """The addresses of every `name` header, in order, at most `limit`."""
    label = name.title()
    value = ", ".join(_raw_values(msg, name))
    chunks = _split_addresses(value[:MAX_ADDRESS_FIELD_CHARS])
    if len(value) > MAX_ADDRESS_FIELD_CHARS:
        chunks = chunks[:-1]  # the last may be cut in the middle
        cut["headers"] = True
        notes.append(f"header too long: {label}")
    found: list[dict[str, str]] = []
    for chunk in chunks:
        if limit is not None and len(found) >= limit:
            break
        found.extend(_parse_address(chunk, label, notes))
    return found[:limit]


def _parse_address(chunk: str, label: str, notes: list[str]) -> list[dict[str, str]]:
    """The addresses in one comma-separated element (a group may hold several)."""
    if len(chunk) > MAX_ADDRESS_CHARS or chunk.count("(") > MAX_PARSED_COMMENTS:
        notes.append(f"unparsable header: {label}")
        return []
    try:
        header = _ADDRESS_LIST(label, chunk)
        notes.extend(type(d).__name__ for d in header.defects)
        found = [
            {"name": _utf8(a.display_name), "address": _utf8(a.addr_spec)}
            for a in header.addresses
            if a.username or a.domain  # garbage parses as the empty address <>
        ]
    except Exception:
        found = []
    if not found and not chunk.rstrip().endswith(";"):  # an empty group holds none
        notes.append(f"unparsable header: {label}")
    return found


def _split_addresses(value: str) -> list[str]:
    """`value` cut at the commas between addresses (those outside quotes,
    comments and angle brackets), so the parser sees one address at a time;
    empty elements left out. Groups are split too; the parser reads their
    halves with a defect but loses no address."""
    chunks = []
    start = 0
    depth = 0  # of comment parentheses
    quoted = angle = escaped = False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(c, 0)
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
        elif angle:
            angle = c != ">"
        elif c == "<":
            angle = True
        elif c == ",":
            chunks.append(value[start:i])
            start = i + 1
    chunks.append(value[start:])
    return [c.strip() for c in chunks if c.strip()]


def _header_list(msg: Message, notes: list[str], cut: dict[str, bool]) -> list[list[str]]:
    pairs = []
    for i, (name, raw) in enumerate(msg.raw_items()):
        if i == MAX_HEADERS:
            cut["headers"] = True
            break
        value, was_cut = _decoded(name, _unfold(str(raw)), notes)
        cut["headers"] |= was_cut or len(name) > MAX_HEADER_CHARS
        pairs.append([name[:MAX_HEADER_CHARS], value])
    return pairs


# --- Reading the parts ---------------------------------------------------------


def _leaves(msg: Message):
    """Every part with no parts of its own, in document order, and then
    None if the message has more than MAX_PARTS parts. Attached messages
    (message/*) are leaves: their content is the attachment."""
    stack = [msg]
    seen = 0
    while stack:
        seen += 1
        if seen > MAX_PARTS:
            yield None
            return
        part = stack.pop()
        children = _children(part)
        if children is None:
            yield part
        else:
            stack.extend(reversed(children))


def _children(part: Message) -> list[Message] | None:
    if not part.is_multipart() or _content_type(part).startswith("message/"):
        return None
    payload = part.get_payload()
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else None


def _layout(msg: Message, notes: list[str]) -> _Layout:
    """The first text/plain and text/html parts not attached are the bodies;
    every other leaf is an attachment, so no content goes unseen."""
    layout = _Layout()
    for part in _leaves(msg):
        if part is None:
            layout.parts_cut = True
            notes.append(f"more than {MAX_PARTS} MIME parts")
            break
        content_type = _content_type(part)
        if _is_attachment(part):
            layout.attachments.append((part, content_type))
        elif content_type == "text/plain" and layout.text is None:
            layout.text = part
        elif content_type == "text/html" and layout.html is None:
            layout.html = part
        else:
            layout.attachments.append((part, content_type))
    return layout


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _is_attachment(part: Message) -> bool:
    try:
        return bool(part.is_attachment())
    except Exception:
        return False


def _filename(part: Message, notes: list[str]) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        notes.append("unparsable filename")
        return None
    return _utf8(str(name))[:MAX_HEADER_CHARS] if name else None


def _content(part: Message, notes: list[str]) -> bytes:
    """The decoded content of a leaf part."""
    if part.is_multipart():  # an attached message, which the parser took apart
        return _serialized(part, notes)
    try:
        data = part.get_payload(decode=True)
    except Exception:
        notes.append("undecodable part")
        return b""
    return data if isinstance(data, bytes) else b""


def _serialized(part: Message, notes: list[str]) -> bytes:
    out = BytesIO()
    try:
        for i, inner in enumerate(part.get_payload()):
            if i:
                out.write(b"\r\n")
            BytesGenerator(out, policy=_SERIALIZING).flatten(inner)
    except Exception:
        notes.append("unserializable attached message")
        return b""
    return out.getvalue()


def _body(part: Message | None, notes: list[str]) -> str | None:
    if part is None:
        return None
    data = _content(part, notes)
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    # Undeclared 8-bit text is most often UTF-8, and UTF-8 reads ASCII too.
    codec = "utf-8"
    if charset and charset not in ("us-ascii", "ascii"):
        try:
            codec = codecs.lookup(charset).name
        except Exception:
            codec = ""
        if not codec or codec in _REFUSED_CODECS:
            notes.append(f"unknown charset: {_printable(charset, 40)}")
            codec = "utf-8"
    try:
        text = data.decode(codec, "replace")
    except Exception:  # a codec that is not a text encoding, or refuses "replace"
        notes.append(f"unknown charset: {_printable(charset or '', 40)}")
        text = data.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def _attachment_list(layout: _Layout, notes: list[str]) -> list[dict[str, Any]]:
    listed = []
    for index, (part, content_type) in enumerate(layout.attachments[:MAX_ATTACHMENTS]):
        content = _content(part, notes)
        listed.append(
            {
                "index": index,
                "filename": _filename(part, notes),
                "content_type": content_type,
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
    return listed


def _defects(msg: Message, notes: list[str]) -> list[str]:
    """The email package's defect names for every part, then our notes,
    each once, at most MAX_DEFECTS."""
    names: list[str] = []
    stack = [msg]
    seen = 0
    while stack and seen < MAX_PARTS:
        seen += 1
        part = stack.pop()
        names.extend(type(d).__name__ for d in getattr(part, "defects", ()))
        if part.is_multipart():
            stack.extend(reversed([p for p in part.get_payload() if isinstance(p, Message)]))
    failed = getattr(msg.policy, "unparsable", None) or []
    names.extend(f"unparsable header: {_printable(name)}" for name in failed)
    names.extend(notes)
    return list(dict.fromkeys(names))[:MAX_DEFECTS]


# --- Fitting the budget --------------------------------------------------------


def _json_size(value: Any) -> int:
    # surrogatepass: a size is still given for text not yet cleaned.
    return len(_ENCODER.encode(value).encode("utf-8", "surrogatepass"))


def _fit(event: dict[str, Any], budget: int) -> None:
    """Cut `event` to at most `budget` bytes of JSON: the bodies get what the
    rest leaves, the text body first."""
    text, html = event["text"], event["html"]
    event["text"] = None if text is None else ""
    event["html"] = None if html is None else ""
    size = _json_size(event)
    if size > budget:
        size = _shrink(event, size, budget)
    room = budget - size  # bytes beyond the two quotes of each empty body
    for key, body in (("text", text), ("html", html)):
        if body is not None:
            event[key], event["truncated"][key] = _cut_text(body, room)
            room -= _json_size(event[key]) - 2


def _cut_text(text: str, room: int) -> tuple[str, bool]:
    """The longest start of `text` whose JSON string takes at most `room`
    bytes besides its quotes, and whether that is not all of it."""
    if len(text) <= room and _json_size(text) - 2 <= room:
        return text, False
    # A character takes 1 to 6 bytes (a control character is written \u0001).
    low, high = min(len(text), room // 6), min(len(text), room)
    while low < high:
        middle = (low + high + 1) // 2
        if _json_size(text[:middle]) - 2 <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low], True


# Cut from the end, in this order, when the event without its bodies is
# over budget: (key, flag set when cut).
_CUTTABLE = (
    ("headers", "headers"),
    ("attachments", "attachments"),
    ("defects", None),
    ("references", "headers"),
    ("reply_to", "headers"),
    ("cc", "headers"),
    ("to", "headers"),
)


def _shrink(event: dict[str, Any], size: int, budget: int) -> int:
    """Cut lists, then one-string fields, until the event without its bodies
    fits; its new size."""
    for key, flag in _CUTTABLE:
        if size <= budget:
            return size
        items = event[key]
        keep = _kept(items, size - budget)
        if keep < len(items):
            del items[keep:]
            if flag:
                event["truncated"][flag] = True
        size = _json_size(event)
    if size > budget:
        # All lists are empty: a few strings of SHRUNK_CHARS fit any budget.
        for key in ("subject", "message_id", "in_reply_to", "auto_submitted"):
            if event[key]:
                event[key] = event[key][:SHRUNK_CHARS]
        if event["from"]:
            event["from"] = {k: v[:SHRUNK_CHARS] for k, v in event["from"].items()}
        event["truncated"]["headers"] = True
        size = _json_size(event)
    return size


def _kept(items: list, excess: int) -> int:
    """How many of `items` to keep, from the start, to free `excess` bytes."""
    keep = len(items)
    freed = 0
    while keep and freed < excess:
        keep -= 1
        freed += _json_size(items[keep]) + (1 if keep else 0)  # and its comma
    return keep
