"""An availability probe from outside the pipeline: what a reader of the live books sees.

Every ``interval_s`` (100 ms) it reads the version of every book and NBBO the job publishes
(the ``<p>:books`` and ``<p>:nbbos`` sets) through the same client any reader uses (through the
Sentinels with Redis HA). The books are *fresh* while some book or NBBO keeps advancing; a
*stall* is a stretch longer than ``stall_s`` in which none advanced (a Redis that does not
answer counts as no advance), from the last advance before it to the first after it. What
the books lose to a failure is the stalls that overlap it; a version that went backwards is
recorded too (it must never happen).

    python -m monitoring.availability [--seconds 60]      (prints the stalls and availability)

Traffic must be steady for this to mean anything: with 30 books fed at a few frames a second
each, some book advances every few tens of milliseconds when the pipeline works.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field

import redis

from jobs.sinks.redis_books import redis_client
from tickflow.config import Settings, load_settings

STALL_S = 1.0


@dataclass(frozen=True)
class Stall:
    """No book or NBBO advanced from ``start`` to ``end`` (``time.monotonic()``)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def overlap(self, start: float, end: float) -> float:
        return max(0.0, min(self.end, end) - max(self.start, start))


@dataclass
class AvailabilityProbe:
    settings: Settings
    interval_s: float = 0.1
    stall_s: float = STALL_S
    samples: int = 0
    failed_reads: int = 0
    stalls: list[Stall] = field(default_factory=list)
    backwards: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    last_advance: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> AvailabilityProbe:
        self.started = self.last_advance = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="availability-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._close_stall(time.monotonic())

    def __enter__(self) -> AvailabilityProbe:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _keys(self, client: redis.Redis) -> list[str]:
        prefix = self.settings.redis.key_prefix
        books = client.smembers(f"{prefix}:books")
        nbbos = client.smembers(f"{prefix}:nbbos")
        return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in (*books, *nbbos))

    def _read(self, client: redis.Redis, keys: list[str]) -> dict[str, int]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "version")
        return {k: int(v) for k, v in zip(keys, pipe.execute(), strict=True) if v is not None}

    def _run(self) -> None:
        config = self.settings.redis
        client = redis_client(config, socket_timeout=1.0, socket_connect_timeout=1.0)
        keys: list[str] = []
        next_keys = 0.0
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            try:
                if now >= next_keys:  # books appear as the job first publishes them
                    keys, next_keys = self._keys(client), now + 5.0
                versions = self._read(client, keys)
            except Exception:  # no primary, or it is being replaced: nothing advanced
                self.failed_reads += 1
                versions = {}
            self.samples += 1
            advanced = False
            for key, version in versions.items():
                before = self.versions.get(key)
                if before is not None and version < before:
                    self.backwards.append(f"{key}: {before} -> {version}")
                elif before is None or version > before:
                    advanced = advanced or before is not None
                    self.versions[key] = version
            if advanced:
                self._close_stall(now)
                self.last_advance = now

    def _close_stall(self, now: float) -> None:
        if now - self.last_advance > self.stall_s:
            self.stalls.append(Stall(self.last_advance, now))

    def stale_seconds(self, start: float, end: float) -> float:
        """Seconds of stalls within [start, end)."""
        return sum(s.overlap(start, end) for s in self.stalls)

    def availability(self) -> float:
        span = time.monotonic() - self.started
        return 1.0 - self.stale_seconds(self.started, self.started + span) / span if span else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monitoring.availability", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    with AvailabilityProbe(load_settings()) as probe:
        time.sleep(args.seconds)
    for stall in probe.stalls:
        print(f"stall of {stall.seconds:.1f} s at +{stall.start - probe.started:.1f} s")
    print(
        f"{len(probe.versions)} books and NBBOs, {probe.samples} samples, "
        f"{probe.failed_reads} failed reads; availability {probe.availability():.5f}"
    )
    return 0 if not probe.backwards else 1


if __name__ == "__main__":
    raise SystemExit(main())
