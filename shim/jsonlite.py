"""JSON for the shim without importing the `json` package.

`import json` pulls in `re` and about twenty modules (~1.2 MB per shim). The
C accelerator `_json` that json itself uses has everything needed to encode
and decode; this module drives it directly and falls back to `json` on an
interpreter that lacks it. Only plain types cross the shim's wire (dict, list,
str, int, float, bool, None); NaN and Infinity are refused both ways.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs memory at run time
    from typing import Any

_WS = " \t\n\r"

try:
    import _json

    class _ScanContext:
        # The attributes _json.make_scanner reads from a JSONDecoder.
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int

        @staticmethod
        def parse_constant(name: str) -> Any:
            raise ValueError(f"{name} is not allowed")

    def _default(obj: Any) -> Any:
        raise TypeError(f"cannot encode {type(obj).__name__}")

    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    _encode = _json.make_encoder(
        None, _default, _json.encode_basestring_ascii, None, ":", ",", False, False, False
    )

    def dumps(obj: Any) -> str:
        """Compact, ASCII-only JSON text of obj."""
        return "".join(_encode(obj, 0))

    def loads(text: str) -> Any:
        """Parse one JSON value; ValueError on anything else."""
        start = len(text) - len(text.lstrip(_WS))
        try:
            value, end = _scan(text, start)
        except StopIteration:
            raise ValueError("expected a JSON value") from None
        except Exception as exc:  # _json raises SystemError when json.decoder is not loaded
            raise ValueError("malformed JSON") from exc
        if text[end:].strip(_WS):
            raise ValueError("trailing data after JSON value")
        return value

except (ImportError, AttributeError):  # pragma: no cover - interpreters without _json
    import json as _stdjson

    def dumps(obj: Any) -> str:
        return _stdjson.dumps(obj, separators=(",", ":"), allow_nan=False)

    def loads(text: str) -> Any:
        try:
            return _stdjson.loads(text)
        except Exception as exc:
            raise ValueError("malformed JSON") from exc
