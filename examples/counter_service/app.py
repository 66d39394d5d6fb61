"""A counter service behind a per-client rate limiter.

    pyobjects serve examples.counter_service.app:worker

Routes (every request to them costs the client one token of its bucket):

    POST /<name>/increment   add 1 to the counter <name>, answer its value
    POST /<name>/decrement   subtract 1, answer the value
    GET  /<name>             answer the value

Each name is its own ``Counter`` object (``id_from_name``). Before forwarding,
the worker asks the client's ``RateLimiter`` object (one per client address)
for a token; without one the client gets ``429 Too Many Requests`` and a
``Retry-After`` header. The limiter keeps a token bucket in storage and an
alarm at the moment the bucket will be full again, when it deletes its
storage: a client that stops sending leaves nothing behind.

Configuration comes from ``vars`` (read from environment variables here, as
``wrangler dev --var`` would set them):

    RATE_LIMIT_BURST        bucket size: requests allowed at once (10)
    RATE_LIMIT_PER_SECOND   tokens added per second (1)
    CLIENT_IP_HEADER        header holding the client's address (CF-Connecting-IP)
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import unquote

import pyobjects
from pyobjects import AlarmInfo, DurableObject, Env, Request, Response

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_BURST = 10
DEFAULT_PER_SECOND = 1.0
DEFAULT_CLIENT_IP_HEADER = "CF-Connecting-IP"
#: The bucket of requests whose client address is unknown (no header).
UNKNOWN_CLIENT = "unknown"


class Counter(DurableObject):
    """One named counter. Its value is the single key of its storage."""

    async def increment(self) -> int:
        return await self._add(1)

    async def decrement(self) -> int:
        return await self._add(-1)

    async def value(self) -> int:
        value: int = await self.ctx.storage.get("value") or 0
        return value

    async def _add(self, delta: int) -> int:
        # A read-modify-write with no other await is atomic (the input gate),
        # and the caller gets the result only once the write is durable.
        value = await self.value() + delta
        self.ctx.storage.put("value", value)
        return value


def rate_limit(env: Mapping[str, Any]) -> tuple[int, float]:
    """Return (burst, tokens per second) from the vars, checked."""
    burst = int(env.get("RATE_LIMIT_BURST", DEFAULT_BURST))
    per_second = float(env.get("RATE_LIMIT_PER_SECOND", DEFAULT_PER_SECOND))
    if burst < 1 or not per_second > 0 or math.isinf(per_second):
        raise ValueError(
            "RATE_LIMIT_BURST must be >= 1 and RATE_LIMIT_PER_SECOND a positive "
            f"number; got {burst!r} and {per_second!r}"
        )
    return burst, per_second


class Bucket(TypedDict):
    """What a limiter stores: the tokens it held at time ``at``."""

    tokens: float
    at: int  # epoch ms of the runtime's clock


class RateLimiter(DurableObject):
    """A token bucket for one client, kept in storage.

    Each request takes a token; tokens flow back at ``per_second`` up to
    ``burst``. A missing bucket is a full one, so the alarm deletes the bucket
    as soon as it is full again: idle clients cost no storage.
    """

    async def take(self) -> int:
        """Take one token. Return 0 if granted, else the seconds to wait."""
        burst, per_second = rate_limit(self.env)
        now = self.ctx.now_ms()
        tokens = await self._tokens(now, burst, per_second)
        if tokens < 1:
            # Nothing is written: the stored bucket still says the same.
            return max(1, math.ceil((1 - tokens) / per_second))
        bucket: Bucket = {"tokens": tokens - 1, "at": now}
        self.ctx.storage.put("bucket", bucket)
        # One alarm per object: each grant moves it to the new "full" time.
        self.ctx.storage.set_alarm(_full_at(bucket, burst, per_second))
        return 0

    async def alarm(self, alarm_info: AlarmInfo) -> None:
        burst, per_second = rate_limit(self.env)
        bucket: Bucket | None = await self.ctx.storage.get("bucket")
        if bucket is None:
            return
        full_at = _full_at(bucket, burst, per_second)
        if self.ctx.now_ms() >= full_at:
            self.ctx.storage.delete_all()  # full again: forget this client
        else:  # the limits changed since the alarm was set
            self.ctx.storage.set_alarm(full_at)

    async def _tokens(self, now: int, burst: int, per_second: float) -> float:
        bucket: Bucket | None = await self.ctx.storage.get("bucket")
        if bucket is None:
            return float(burst)
        refilled = bucket["tokens"] + (now - bucket["at"]) * per_second / 1000
        return min(float(burst), refilled)


def _full_at(bucket: Bucket, burst: int, per_second: float) -> int:
    """The epoch ms at which *bucket* holds *burst* tokens again."""
    missing = max(0.0, burst - bucket["tokens"])
    return bucket["at"] + math.ceil(missing * 1000 / per_second)


def client_key(request: Request, env: Mapping[str, Any]) -> str | None:
    """Name the rate limiter of the request's client; ``None`` if malformed.

    The client's address is not part of a ``Request``: as on Cloudflare, it
    comes in a header set by the edge (``CF-Connecting-IP`` by default; name
    another one, such as ``X-Real-IP``, with ``CLIENT_IP_HEADER``). Trust it
    only behind a proxy that sets it: a client talking to the server
    directly can write any value there. Requests without it share one
    bucket. IPv6 clients are limited per /64 network, the block one
    subscriber usually gets.
    """
    header = str(env.get("CLIENT_IP_HEADER", DEFAULT_CLIENT_IP_HEADER))
    value = request.headers.get(header)
    if value is None:
        return UNKNOWN_CLIENT
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:192.0.2.1 is 192.0.2.1
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _json(obj: object) -> Response:
    return Response(
        json.dumps(obj) + "\n", headers={"content-type": "application/json"}
    )


def _text(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(text + "\n", status=status, headers=headers)


async def fetch(request: Request, env: Env) -> Response:
    segments = request.path.removeprefix("/").split("/")
    name = unquote(segments[0])
    if not name or len(segments) > 2:
        return _text(
            404, "Not Found: use /<name>, /<name>/increment or /<name>/decrement"
        )
    action = segments[1] if len(segments) == 2 else "value"
    if action not in ("increment", "decrement", "value"):
        return _text(404, f"Not Found: no action {action!r}")
    allowed = ("GET", "HEAD") if action == "value" else ("POST",)
    if request.method not in allowed:
        return _text(405, "Method Not Allowed", {"allow": ", ".join(allowed)})

    client = client_key(request, env)
    if client is None:
        return _text(400, "Bad Request: the client address header is malformed")
    wait = await env.RATE_LIMITER.get_by_name(client).take()
    if wait:
        message = f"Too Many Requests: retry in {wait} s"
        return _text(429, message, {"retry-after": str(wait)})

    counter = env.COUNTERS.get_by_name(name)
    if action == "increment":
        value = await counter.increment()
    elif action == "decrement":
        value = await counter.decrement()
    else:
        value = await counter.value()
    return _json({"name": name, "value": value})


worker = pyobjects.Worker(
    fetch,
    bindings={"COUNTERS": Counter, "RATE_LIMITER": RateLimiter},
    vars={
        "RATE_LIMIT_BURST": os.environ.get("RATE_LIMIT_BURST", str(DEFAULT_BURST)),
        "RATE_LIMIT_PER_SECOND": os.environ.get(
            "RATE_LIMIT_PER_SECOND", str(DEFAULT_PER_SECOND)
        ),
        "CLIENT_IP_HEADER": os.environ.get(
            "CLIENT_IP_HEADER", DEFAULT_CLIENT_IP_HEADER
        ),
    },
)
