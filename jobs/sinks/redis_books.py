"""Live books and NBBOs in Redis, written idempotently.

Layout (``<p>`` is ``redis.key_prefix``):
- ``<p>:book:<exchange>:<symbol>`` hash: ``instrument``, ``status`` (LIVE | RESYNCING | STALE),
  ``reason``, ``seq`` (last applied exchange update id),
  ``version`` (monotonic per book, zero-padded), ``bids`` and ``asks`` (JSON arrays of
  ``[price, size]`` strings, best first, top N; empty unless LIVE), ``event_time_ms``,
  ``receive_time_ns``, ``publish_time_ns``.
- ``<p>:books``: set of every book key (for listing).
- channel ``<p>:book-updates``: one message per accepted write,
  ``<exchange>:<symbol>:<seq>:<status>:<version>``.
- ``<p>:nbbo:<instrument>`` hash: the live NBBO per instrument (fields below), ``<p>:nbbos``
  lists the keys; channel ``<p>:nbbo-updates`` carries ``<instrument>:<version>`` per
  accepted write.
- ``live_until_ms`` on every book and NBBO hash: the job's lease on it, renewed about every
  fifth of ``redis.live_lease_ms`` while the job runs. A reader takes a hash as live only while
  the lease holds (``effective_status``): a job that stopped, crashed or fell far behind leaves
  its books and NBBOs reading ``EXPIRED`` within the lease, in Redis itself, not only in our CLI.

The compiled core (``jobs/native/src/publish.rs``) encodes each write's KEYS and ARGV; this
module holds the Lua scripts that apply them and sends them. A script refuses a write whose
``version`` is lower than the stored one, so replaying frames after a Flink restore
(at-least-once) never moves a book backwards. One book update is one EVALSHA instead of a
pipeline of per-level commands, and ``RedisBatch`` sends the EVALSHAs of many updates in one
round trip (the round trip, not Redis, is the cost: ~0.1-0.5 ms each on a busy 2-core box
against a few us to encode a write).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import redis
from redis.exceptions import NoScriptError

from tickflow.config import RedisConfig

# versions are compared as zero-padded decimal strings: Lua numbers are doubles, exact only
# to 2^53, and versions are larger
VERSION_WIDTH = 24
FAILOVER_POLL_S = 0.1  # a batch waiting for a new primary tries again this often

# KEYS: the book's hash, the set of book keys, the updates channel. ARGV: seq, status, reason,
# bids, asks, event_time_ms, receive_time_ns, instrument, publish_time_ns, the channel's
# message, version (zero-padded to VERSION_WIDTH)
_GUARDED_WRITE = """
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and cur > ARGV[11] then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'status', ARGV[2], 'reason', ARGV[3],
  'bids', ARGV[4], 'asks', ARGV[5], 'event_time_ms', ARGV[6], 'receive_time_ns', ARGV[7],
  'instrument', ARGV[8], 'publish_time_ns', ARGV[9], 'version', ARGV[11])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PUBLISH', KEYS[3], ARGV[10])
return 1
"""


# KEYS: book and NBBO hashes. ARGV: live_until_ms. A hash that is gone stays gone.
_LEASE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'live_until_ms', ARGV[1])
  end
end
return #KEYS
"""

LEASE_FIELD = "live_until_ms"
EXPIRED = "EXPIRED"


def effective_status(status: str, live_until_ms: str | int | None, now_ms: int) -> str:
    """A stored status as a reader must take it: a LIVE hash whose writer's lease ran out is
    ``EXPIRED`` (the pipeline stopped writing it). A hash with no lease (leases off) keeps its
    status."""
    if status != "LIVE" or live_until_ms in (None, ""):
        return status
    try:
        until = int(live_until_ms)
    except ValueError:
        return EXPIRED
    return status if now_ms <= until else EXPIRED


def book_key(prefix: str, exchange: str, symbol: str) -> str:
    return f"{prefix}:book:{exchange}:{symbol}"


def redis_client(config: RedisConfig, **options: Any) -> redis.Redis:
    """A client of the configured Redis: address, database, AUTH token and TLS. With Sentinels
    (``redis.sentinel_ports``, the HA profile) a client of whichever instance is the primary
    now: each new connection asks the Sentinels, and a connection to a primary that went away
    or was demoted fails, so the next one finds the promoted replica."""
    kwargs = _client_kwargs(config, options)
    if config.sentinels():
        from redis.sentinel import Sentinel

        sentinel = Sentinel(config.sentinels(), sentinel_kwargs=_sentinel_kwargs(config), **kwargs)
        return sentinel.master_for(config.sentinel_service)
    return redis.Redis(host=config.host, port=config.port, **kwargs)


def async_redis_client(config: RedisConfig, **options: Any) -> Any:
    """``redis_client`` for asyncio (``redis.asyncio``)."""
    import redis.asyncio as aioredis

    kwargs = _client_kwargs(config, options)
    if config.sentinels():
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(config.sentinels(), sentinel_kwargs=_sentinel_kwargs(config), **kwargs)
        return sentinel.master_for(config.sentinel_service)
    return aioredis.Redis(host=config.host, port=config.port, **kwargs)


def _client_kwargs(config: RedisConfig, options: dict[str, Any]) -> dict[str, Any]:
    return {"db": config.db, "password": config.password or None, "ssl": config.tls, **options}


def _sentinel_kwargs(config: RedisConfig) -> dict[str, Any]:
    # the Sentinels require the same password as Redis (stack.redis_server); a Sentinel that
    # does not answer within these is skipped for the next one
    return {
        "password": config.password or None,
        "socket_timeout": 1.0,
        "socket_connect_timeout": 1.0,
    }


def job_redis_client(config: RedisConfig) -> redis.Redis:
    """The job's client: a Redis that does not answer within ``redis.socket_connect_timeout_ms``
    / ``redis.socket_timeout_ms`` (down, paused, blackholed) raises instead of holding the
    books operator, and with it the job, forever. The job then fails and restores from its
    checkpoint; the version-guarded writes make the replay harmless. With Sentinels, a batch
    first waits up to ``redis.failover_wait_ms`` for a new primary (``RedisBatch``)."""
    return redis_client(
        config,
        socket_connect_timeout=config.socket_connect_timeout_ms / 1000,
        socket_timeout=config.socket_timeout_ms / 1000,
    )


# KEYS: the NBBO's hash, the set of NBBO keys, the updates channel. ARGV: version
# (zero-padded), the channel's message, then field name and value pairs: quote, bid_price,
# bid_size, bid_venues and the same for the ask (venues comma-separated; prices empty when no
# book has that side), locked/crossed (0/1), venues and excluded (JSON: included
# ``exchange:symbol`` list; ``{venue: reason}`` of the books left out), event_time_ms,
# receive_time_ns, publish_time_ns
_GUARDED_NBBO = """
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and cur > ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'version', ARGV[1])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PUBLISH', KEYS[3], ARGV[2])
return 1
"""


def nbbo_key(prefix: str, instrument: str) -> str:
    return f"{prefix}:nbbo:{instrument}"


class RedisBatch:
    """Guarded book and NBBO writes queued in order and sent in one pipelined round trip.

    Redis applies them in the order queued (one connection); only the round trips are shared.
    ``flush`` raises on any error (the job then restarts from a checkpoint), except that with
    ``failover_wait_s`` (Sentinels) a lost connection to the primary is retried that long: the
    Sentinels promote the replica meanwhile, and the whole batch is sent again to it (a write
    that reached the old primary too is refused or repeated by its version guard).
    """

    def __init__(self, client: redis.Redis, failover_wait_s: float = 0.0) -> None:
        self.client = client
        self.failover_wait_s = failover_wait_s
        self.failovers = 0  # batches that waited for a new primary
        # EVALSHA by the scripts' SHA1 (what SCRIPT LOAD returns), loaded on first NOSCRIPT
        self._scripts = {
            script: hashlib.sha1(script.encode()).hexdigest()
            for script in (_GUARDED_WRITE, _GUARDED_NBBO, _LEASE)
        }
        self._queue: list[tuple[str, list[str], list[Any]]] = []

    def __len__(self) -> int:
        return len(self._queue)

    def add_write(self, is_nbbo: bool, keys: list[str], args: list[Any]) -> None:
        """A guarded write of a book (or an NBBO) with its KEYS and ARGV (see the scripts)."""
        self._queue.append((_GUARDED_NBBO if is_nbbo else _GUARDED_WRITE, keys, args))

    def add_lease(self, keys: list[str], live_until_ms: int) -> None:
        """Renew the writer's lease on these hashes (those that exist)."""
        if keys:
            self._queue.append((_LEASE, keys, [live_until_ms]))

    def flush(self) -> list[bool]:
        """Send every queued write; whether each was accepted (False: Redis had a newer one)."""
        queue, self._queue = self._queue, []
        if not queue:
            return []
        results = self._send_through_failover(queue)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # Redis lost its script cache (a restart): load the scripts, send those again
            for script in self._scripts:
                self._scripts[script] = self.client.script_load(script)
            for i, result in zip(missing, self._send([queue[i] for i in missing]), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return [bool(r) for r in results]

    def _send_through_failover(self, queue: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        deadline = time.monotonic() + self.failover_wait_s
        waited = False
        while True:
            try:
                results = self._send(queue)
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() >= deadline:
                    raise
                waited = True
                time.sleep(FAILOVER_POLL_S)
                continue
            self.failovers += waited
            return results

    def _send(self, queue: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args in queue:
            pipe.execute_command("EVALSHA", self._scripts[script], len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))
