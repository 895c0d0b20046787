"""One writer per network: a lease in Redis with a fencing token.

A pipeline acquires `<prefix>:{<network>}:lease` before it writes anything for its network and renews it
every cycle; the value is `<epoch>:<owner>`, where `epoch` comes from a counter that only grows
(`…:lease:epoch`) — the **fencing token**. Every write the sink makes checks, inside the same Redis script,
that the lease still holds this pipeline's token, so a pipeline that lost its lease (paused past the TTL,
a zombie of a restarted actor) cannot write one more key: its write fails with `LeaseLost` and it stops.

A second pipeline for the same network waits up to the TTL for the lease (the first may just have
crashed) and is then refused with `LeaseHeld`, naming the holder. The same `owner` may take its own lease
over at once with a new epoch: a Ray actor's id survives its restarts, so a restarted pipeline actor
resumes without waiting, and its previous incarnation is fenced out.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

import redis
from redis.exceptions import AskError, ClusterError, SlotNotCoveredError, TryAgainError

from serving.keys import Keys

log = logging.getLogger(__name__)

# Redis failures that pass: retried by the sink until its deadline; a renewal skips them (the next cycle
# renews, or takes back a lease that lapsed meanwhile while nobody acquired it)
TRANSIENT_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
    AskError,
)

# KEYS: lease, epoch counter. ARGV: owner, ttl ms. -> {1, token} or {0, holder, pttl}
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder = string.sub(cur, string.find(cur, ':', 1, true) + 1)
  if holder ~= ARGV[1] then return {0, cur, redis.call('PTTL', KEYS[1])} end
end
local epoch = redis.call('INCR', KEYS[2])
local token = epoch .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token}
"""
# KEYS: lease, epoch counter. ARGV: token, ttl ms, epoch. -> 1 renewed, 0 lost. A lease that lapsed (a
# long cycle) while nobody acquired it since (the counter still at its epoch) is taken back.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not cur and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseHeld(RuntimeError):
    """Another pipeline serves this network (it holds the lease and keeps renewing it)."""


class LeaseLost(RuntimeError):
    """This pipeline's lease expired or was taken over: it must stop writing."""


def default_owner() -> str:
    """Who is asking: the Ray actor id inside an actor (stable across its restarts), else host:pid:random."""
    try:
        import ray

        if ray.is_initialized():
            actor = ray.get_runtime_context().get_actor_id()
            if actor:
                return f"actor-{actor}"
    except ImportError:  # pragma: no cover
        pass
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Lease:
    """The writer lease of one network; `token` is what every write checks (None until acquired)."""

    def __init__(self, client: Any, keys: Keys, *, ttl_s: float, owner: str | None = None) -> None:
        if ":" in (owner or ""):
            raise ValueError(f"a lease owner may not contain ':' ({owner!r})")
        self.client = client
        self.keys = keys
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.owner = owner or default_owner()
        self.token: str | None = None
        self._renewed = 0.0
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self, wait_s: float | None = None) -> str:
        """Take the lease, waiting up to `wait_s` (default: the TTL) for another holder's to lapse."""
        deadline = time.monotonic() + (self.ttl_ms / 1000 + 1.0 if wait_s is None else wait_s)
        keys = [self.keys.lease, self.keys.lease_epoch]
        while True:
            got = self._acquire(keys=keys, args=[self.owner, self.ttl_ms])
            if int(got[0]) == 1:
                self.token = _text(got[1])
                self._renewed = time.monotonic()
                log.info("lease acquired", extra={"network": self.keys.network, "token": self.token})
                return self.token
            holder, pttl = _text(got[1]), int(got[2])
            if time.monotonic() >= deadline:
                raise LeaseHeld(
                    f"network {self.keys.network!r} is already served by another pipeline (lease "
                    f"{self.keys.lease} = {holder!r}, renewed by its holder; expires in {pttl / 1000:.1f} s "
                    "if it stops): stop that one first, or give this one another network name or key prefix"
                )
            time.sleep(min(0.5, max(0.05, pttl / 1000)))

    def renew(self, *, every_s: float | None = None) -> None:
        """Extend the lease (at most every `every_s`, default a third of the TTL); `LeaseLost` if it is gone."""
        if self.token is None:
            raise LeaseLost(f"network {self.keys.network!r}: no lease acquired")
        every = self.ttl_ms / 3000 if every_s is None else every_s
        if time.monotonic() - self._renewed < every:
            return
        keys = [self.keys.lease, self.keys.lease_epoch]
        try:
            renewed = int(self._renew(keys=keys, args=[self.token, self.ttl_ms, self.epoch]))
        except TRANSIENT_ERRORS as exc:  # Redis unreachable: the sink's writes wait for it; so does this
            log.warning("lease not renewed: Redis unreachable", extra={"error": repr(exc)})
            return
        if not renewed:
            raise LeaseLost(self.lost_message())
        self._renewed = time.monotonic()

    @property
    def epoch(self) -> str:
        """The fencing counter's value this lease was acquired at (the token's first part)."""
        return (self.token or "").split(":", 1)[0]

    def lost_message(self) -> str:
        return (
            f"network {self.keys.network!r}: this pipeline's lease {self.token!r} expired or was taken over "
            "by another pipeline; it stops writing"
        )

    def release(self) -> None:
        """Give the lease up (when still held); a Redis that cannot be reached lets it lapse instead."""
        if self.token is not None:
            try:
                self._release(keys=[self.keys.lease], args=[self.token])
            except TRANSIENT_ERRORS:
                log.warning("lease not released: Redis unreachable; it lapses", extra={"token": self.token})
            self.token = None

    def holder(self) -> str | None:
        raw = self.client.get(self.keys.lease)
        return None if raw is None else _text(raw)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
