"""Limits and checks of the storage API: keys, values, batches, alarm times.

Every backend gets the same rules from here (Cloudflare's numbers, see
reference/cloudflare-semantics.md), checked at the call so that a bad write
never reaches a commit and fails the rest of its batch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pyobjects._errors import StorageLimitError
from pyobjects._serialization import MAX_VALUE_BYTES, encode

from ._base import MAX_ALARM_MS

__all__ = [
    "CACHE_BYTES",
    "MAX_BATCH_KEYS",
    "MAX_KEY_BYTES",
    "alarm_ms",
    "check_batch_size",
    "check_key",
    "encode_value",
    "not_a_key",
    "prefix_end",
]

MAX_KEY_BYTES = 2048
MAX_BATCH_KEYS = 128
# Clean values kept in memory per object (Cloudflare's KV cache soft limit is
# 16 MiB per isolate; this is per object and only saves backend reads).
CACHE_BYTES = 8 * 1024 * 1024


def _converts(what: str) -> str:
    return (
        "(Cloudflare's JavaScript API converts any key to a string; "
        f"here pass str({what}))"
    )


def not_a_key(op: str, key: object) -> TypeError:
    """The error of ``get()``/``delete()`` given neither a key nor a list of keys."""
    return TypeError(
        f"{op}() takes a str key or a list of keys, not {type(key).__name__} "
        + _converts("key")
    )


def check_key(key: object, what: str = "key") -> str:
    """Validate a storage key: a ``str`` of at most 2,048 UTF-8 bytes."""
    if type(key) is not str and not isinstance(key, str):
        raise TypeError(
            f"storage {what} must be a str, not {type(key).__name__} " + _converts(what)
        )
    if key.isascii():
        size = len(key)
    else:
        try:
            size = len(key.encode())
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"storage {what} {key!r} cannot be encoded as UTF-8 (lone surrogate)"
            ) from exc
    if size > MAX_KEY_BYTES:
        raise StorageLimitError("key", limit=MAX_KEY_BYTES, size=size)
    return key


def check_batch_size(n: int) -> None:
    if n > MAX_BATCH_KEYS:
        raise StorageLimitError("batch", limit=MAX_BATCH_KEYS, size=n)


def encode_value(value: object) -> bytes:
    """Encode a value for storage, enforcing the 128 KiB limit."""
    data = encode(value)
    if len(data) > MAX_VALUE_BYTES:
        raise StorageLimitError("value", limit=MAX_VALUE_BYTES, size=len(data))
    return data


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _shown(when: object) -> str:
    if isinstance(when, int) and when.bit_length() > 128:
        # repr() of a huge int is slow, or refused (sys.set_int_max_str_digits).
        return f"an int of {when.bit_length()} bits"
    return repr(when)


def alarm_ms(when: object, what: str = "set_alarm()") -> int:
    """Turn an alarm time (epoch ms or an aware datetime) into epoch ms."""
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise TypeError(
                f"{what} needs a timezone-aware datetime (or epoch milliseconds); "
                f"got the naive {when!r}"
            )
        # Exact integer arithmetic, truncated to the millisecond like a float.
        ms = (when - _EPOCH) // timedelta(milliseconds=1)
    elif isinstance(when, (int, float)) and not isinstance(when, bool):
        if when != when or when in (float("inf"), float("-inf")):
            raise TypeError(f"{what} needs a finite time, not {when!r}")
        ms = int(when)
    else:
        raise TypeError(
            f"{what} takes epoch milliseconds (int) or an aware datetime, "
            f"not {type(when).__name__}"
        )
    if ms <= 0:
        if what == "set_alarm()":
            raise TypeError("setAlarm() cannot be called with an alarm time <= 0")
        raise ValueError(f"{what} needs a time after the epoch, not {when!r}")
    if ms > MAX_ALARM_MS:
        # Checked here, at the call: past the backends' range it would fail
        # the commit instead, and with it every other write of the batch.
        message = (
            f"{what} needs a time at most {MAX_ALARM_MS} epoch milliseconds "
            f"(the largest JavaScript Date, in the year 275760), not {_shown(when)}"
        )
        if what == "set_alarm()":
            raise TypeError(message)
        raise ValueError(message)
    return ms


def prefix_end(prefix: str) -> str | None:
    """Return the first string after every string that starts with *prefix*."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # skip surrogates: never part of a key
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None
