"""JSON for the run path, through the json package's own C accelerator (`_json`) alone.

`import json` costs ~5 ms of a container's start: json.decoder imports `re` (its whitespace and
number patterns), and `re` imports `enum`. The parsing and the compact writing are done by C
code either way: json.loads ends in `_json.make_scanner`'s scan_once, json.dumps without indent
in `_json.make_encoder`. This module calls them directly, configured as json.loads and
json.dumps configure them, so the results are the json package's, byte for byte
(tests/unit/test_jsonio.py). Indented output (files meant for people) stays with `json`.

Errors are json's: JSONDecodeError (a ValueError), TypeError for what JSON cannot hold.
"""
from __future__ import annotations

import _json

_WHITESPACE = " \t\n\r"            # json.decoder.WHITESPACE: [ \t\n\r]*


class _Decoder:
    """The attributes `_json.make_scanner` reads: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


_scan_once = _json.make_scanner(_Decoder())


def _error(message: str, text: str, pos: int):
    from json.decoder import JSONDecodeError    # only to report: it imports re

    return JSONDecodeError(message, text, pos)


def loads(data: str | bytes | bytearray):
    """json.loads for a document in UTF-8 (bytes) or a str."""
    if isinstance(data, (bytes, bytearray)):
        text = bytes(data).decode("utf-8-sig" if data[:3] == b"\xef\xbb\xbf" else "utf-8")
    else:
        text = data
        if text.startswith("\ufeff"):
            raise _error("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan_once(text, start)
    except StopIteration as err:
        raise _error("Expecting value", text, err.value) from None
    except SystemError:
        # The C scanner raises its syntax errors as json.decoder.JSONDecodeError, which it
        # looks up in sys.modules only: not imported, it fails without an exception. Import
        # it (a document that is not JSON is rare) and scan again for the real error.
        import json.decoder  # noqa: F401

        _scan_once(text, start)
        raise
    if text[end:].strip(_WHITESPACE):
        end += len(text[end:]) - len(text[end:].lstrip(_WHITESPACE))
        raise _error("Extra data", text, end)
    return value


def load(f):
    """json.load: the whole of file ``f`` (text or binary) as one document."""
    return loads(f.read())


def _unserializable(value):
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value, *, sort_keys: bool = False, separators: tuple[str, str] = (", ", ": ")) -> str:
    """json.dumps(value, sort_keys=, separators=) with no indent (ensure_ascii, as json's
    default)."""
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    # json.encoder.JSONEncoder.iterencode's call: a fresh markers dict (check_circular), the
    # default that refuses, allow_nan
    encode = _json.make_encoder({}, _unserializable, _json.encode_basestring_ascii, None,
                                separators[1], separators[0], sort_keys, False, True)
    return "".join(encode(value, 0))
