"""JSON for the runtime's hot path, on the `_json` C accelerator alone.

`import json` pulls in `re`, `enum`, `functools` and `collections` (10-40 ms measured here, a
third of runc's whole `run`); the C scanner and encoder need none of them. Same results as
json.loads / json.dumps for the data capsa reads and writes. Imports only _json.
"""
import _json

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
_WHITESPACE = " \t\n\r"


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo = None


_scan = _json.make_scanner(_Context)
_escape = _json.encode_basestring_ascii
_compact = _json.make_encoder(None, None, _escape, None, ":", ",", False, False, True)
_spaced = _json.make_encoder(None, None, _escape, None, ": ", ", ", False, False, True)
_sorted = _json.make_encoder(None, None, _escape, None, ":", ",", True, False, True)


def loads(text):
    """Parse a JSON document (str or bytes); ValueError (json's JSONDecodeError) when malformed."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8-sig" if text[:3] == b"\xef\xbb\xbf" else "utf-8")
    start = 0
    end = len(text)
    while start < end and text[start] in _WHITESPACE:
        start += 1
    while end > start and text[end - 1] in _WHITESPACE:
        end -= 1
    try:
        value, stop = _scan(text[:end], start)
    except StopIteration as stop:
        _fail("Expecting value", text, stop.value)
    if stop != end:
        _fail("Extra data", text, stop)
    return value


def _fail(message, text, position):
    from json.decoder import JSONDecodeError  # only on the error path
    raise JSONDecodeError(message, text, position)


def dumps(value, indent=None, compact=True, sort_keys=False):
    """Serialise; compact separators by default, or indented like json.dumps(indent=N);
    sort_keys (compact only) gives a canonical text, e.g. for a content hash."""
    if sort_keys:
        return "".join(_sorted(value, 0))
    if indent is None:
        return "".join((_compact if compact else _spaced)(value, 0))
    parts = []
    _pretty(value, indent, 0, parts)
    return "".join(parts)


def _pretty(value, indent, level, parts):
    if isinstance(value, dict) and value:
        pad = "\n" + " " * (indent * (level + 1))
        parts.append("{")
        first = True
        for key, item in value.items():
            parts.append(pad if first else "," + pad)
            first = False
            parts.append(_escape(str(key)) + ": ")
            _pretty(item, indent, level + 1, parts)
        parts.append("\n" + " " * (indent * level) + "}")
    elif isinstance(value, (list, tuple)) and value:
        pad = "\n" + " " * (indent * (level + 1))
        parts.append("[")
        for index, item in enumerate(value):
            parts.append(pad if index == 0 else "," + pad)
            _pretty(item, indent, level + 1, parts)
        parts.append("\n" + " " * (indent * level) + "]")
    else:
        parts.append("".join(_compact(value, 0)))
