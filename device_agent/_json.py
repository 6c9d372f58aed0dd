"""Strict JSON in and canonical JSON out, plus typed field access for hand-rolled schemas.

Written by hand rather than with jsonschema/pydantic because this runs on the device, where every
dependency and every millisecond of import time counts; the schemas here are small and flat.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

from device_agent.errors import EdgefleetError

JsonObject = dict[str, Any]
MAX_DEPTH = 64  # nesting our documents never come near; enforced here, not by the interpreter's recursion limit


def canonical_json(obj: Any) -> bytes:
    """Serialize ``obj`` canonically: sorted keys, UTF-8, no insignificant whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, brackets inside strings ignored. Hand-written:
    the stdlib parser only stops at Python's recursion limit, which any imported library may raise."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def loads_strict(data: bytes, *, max_bytes: int, error: type[EdgefleetError], what: str) -> Any:
    """Parse UTF-8 JSON with a size cap, rejecting duplicate keys, NaN/Infinity and deep nesting.

    Raises:
        error: (the given class) for any of those, with a message naming ``what``.
    """
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, over the {max_bytes}-byte limit")

    def pairs(items: list[tuple[str, Any]]) -> JsonObject:
        out: JsonObject = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        text = bytes(data).decode("utf-8")
        if text.count("[") + text.count("{") > MAX_DEPTH and _nesting(text) > MAX_DEPTH:  # scan only when it could be
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        return json.loads(text, object_pairs_hook=pairs, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{what} is not valid JSON: {str(exc)[:200]}") from None


class Fields:
    """Typed, bounded access to one JSON object; every failure raises ``error`` naming the path."""

    def __init__(self, obj: Any, where: str, error: type[EdgefleetError]) -> None:
        if not isinstance(obj, dict):
            raise error(f"{where} must be an object, not {_kind(obj)}")
        self.obj: Mapping[str, Any] = obj
        self.where = where
        self.error = error

    def fail(self, key: str, message: str) -> NoReturn:
        raise self.error(f"{self.where}.{key} {message}")

    def has(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def _get(self, key: str, optional: bool) -> Any:
        value = self.obj.get(key)
        if value is None and not optional:
            self.fail(key, "is required")
        return value

    def string(self, key: str, *, pattern: re.Pattern[str] | None = None, max_len: int = 256) -> str:
        value = self._get(key, False)
        return self._check_str(key, value, pattern, max_len)

    def opt_string(self, key: str, *, pattern: re.Pattern[str] | None = None, max_len: int = 256) -> str | None:
        value = self._get(key, True)
        return None if value is None else self._check_str(key, value, pattern, max_len)

    def _check_str(self, key: str, value: Any, pattern: re.Pattern[str] | None, max_len: int) -> str:
        if not isinstance(value, str):
            self.fail(key, f"must be a string, not {_kind(value)}")
        if len(value) > max_len:
            self.fail(key, f"is longer than {max_len} characters")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(key, f"{value[:80]!r} does not match {pattern.pattern}")
        return value

    def integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self._get(key, False)
        return self._check_int(key, value, lo, hi)

    def opt_integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self._get(key, True)
        return None if value is None else self._check_int(key, value, lo, hi)

    def _check_int(self, key: str, value: Any, lo: int | None, hi: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"must be an integer, not {_kind(value)}")
        if lo is not None and value < lo:
            self.fail(key, f"must be >= {lo}")
        if hi is not None and value > hi:
            self.fail(key, f"must be <= {hi}")
        return value

    def number(self, key: str, *, lo: float | None = None, hi: float | None = None) -> float:
        value = self._get(key, False)
        return self._check_num(key, value, lo, hi)

    def _check_num(self, key: str, value: Any, lo: float | None, hi: float | None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(key, f"must be a finite number, not {_kind(value)}")
        if lo is not None and value < lo:
            self.fail(key, f"must be >= {lo}")
        if hi is not None and value > hi:
            self.fail(key, f"must be <= {hi}")
        return float(value)

    def child(self, key: str) -> Fields:
        return Fields(self._get(key, False), f"{self.where}.{key}", self.error)

    def opt_child(self, key: str) -> Fields | None:
        value = self._get(key, True)
        return None if value is None else Fields(value, f"{self.where}.{key}", self.error)

    def raw_obj(self, key: str, *, max_keys: int = 256) -> JsonObject:
        """An object kept as plain JSON (e.g. provenance), only bounded in size."""
        value = self._get(key, True)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be an object, not {_kind(value)}")
        if len(value) > max_keys:
            self.fail(key, f"has more than {max_keys} keys")
        return dict(value)

    def array(self, key: str, *, max_items: int, optional: bool = False) -> list[Any]:
        value = self._get(key, optional)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(key, f"must be a list, not {_kind(value)}")
        if len(value) > max_items:
            self.fail(key, f"has more than {max_items} items")
        return value

    def children(self, key: str, *, max_items: int, optional: bool = False) -> Iterator[Fields]:
        for i, item in enumerate(self.array(key, max_items=max_items, optional=optional)):
            yield Fields(item, f"{self.where}.{key}[{i}]", self.error)

    def strings(self, key: str, *, max_items: int, max_len: int = 256) -> list[str]:
        items = self.array(key, max_items=max_items, optional=True)
        for i, item in enumerate(items):
            if not isinstance(item, str) or len(item) > max_len:
                self.fail(f"{key}[{i}]", f"must be a string of at most {max_len} characters")
        return list(items)

    def numbers(self, key: str, *, max_items: int) -> list[float]:
        items = self.array(key, max_items=max_items, optional=True)
        return [self._check_num(f"{key}[{i}]", v, None, None) for i, v in enumerate(items)]

    def integers(self, key: str, *, max_items: int) -> list[int]:
        items = self.array(key, max_items=max_items, optional=True)
        return [self._check_int(f"{key}[{i}]", v, None, None) for i, v in enumerate(items)]

    def enum(self, key: str, choices: tuple[str, ...]) -> str:
        value: str = self.string(key)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, not {value[:40]!r}")
        return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def drop_none(d: Mapping[str, Any]) -> JsonObject:
    """Omit keys whose value is None, so optional fields stay out of canonical JSON."""
    return {k: v for k, v in d.items() if v is not None}
