"""In-memory stand-ins for what a PyFlink keyed function sees of Flink: the current key, value
states (pickled as Flink's PICKLED_BYTE_ARRAY serializer does), timers, metrics. A function
opened again on the same runtime context sees the same state, as after a restore."""

from __future__ import annotations

import pickle
from typing import Any


class Keyed:
    """The current key, shared by every state of one fake runtime context."""

    def __init__(self) -> None:
        self.key = ""


class FakeValueState:
    def __init__(self, keyed: Keyed, pickled: bool) -> None:
        self.keyed = keyed
        self.pickled = pickled
        self.data: dict[str, Any] = {}

    def value(self) -> Any:
        value = self.data.get(self.keyed.key)
        return pickle.loads(value) if self.pickled and value is not None else value

    def update(self, value: Any) -> None:
        self.data[self.keyed.key] = pickle.dumps(value) if self.pickled else value

    def clear(self) -> None:
        self.data.pop(self.keyed.key, None)


class FakeCounter:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, n: int = 1) -> None:
        self.count += n


class FakeMetricGroup:
    def __init__(self) -> None:
        self.counters: dict[str, FakeCounter] = {}

    def add_group(self, name: str, extra: str | None = None) -> FakeMetricGroup:
        return self

    def counter(self, name: str) -> FakeCounter:
        return self.counters.setdefault(name, FakeCounter())


class FakeRuntimeContext:
    def __init__(self) -> None:
        self.keyed = Keyed()
        self.named: dict[str, FakeValueState] = {}
        self.metrics = FakeMetricGroup()

    def get_state(self, descriptor: Any) -> FakeValueState:
        if descriptor.name not in self.named:
            pickled = "Pickled" in type(descriptor.type_info).__name__
            self.named[descriptor.name] = FakeValueState(self.keyed, pickled)
        return self.named[descriptor.name]

    def get_metrics_group(self) -> FakeMetricGroup:
        return self.metrics


class FakeTimerService:
    def __init__(self) -> None:
        self.watermark = -(2**63)
        self.now_ms = 0
        self.processing: list[int] = []
        self.event: list[int] = []

    def current_watermark(self) -> int:
        return self.watermark

    def current_processing_time(self) -> int:
        return self.now_ms

    def register_processing_time_timer(self, t: int) -> None:
        self.processing.append(t)

    def register_event_time_timer(self, t: int) -> None:
        self.event.append(t)


class FakeContext:
    """A keyed function's context; ``domain``: the time domain of the timer it stands for."""

    def __init__(self, keyed: Keyed, timers: FakeTimerService, domain: str = "") -> None:
        self.keyed = keyed
        self.timers = timers
        self.domain = domain

    def get_current_key(self) -> str:
        return self.keyed.key

    def timer_service(self) -> FakeTimerService:
        return self.timers

    def time_domain(self) -> Any:
        from pyflink.datastream import TimeDomain

        return TimeDomain.EVENT_TIME if self.domain == "event" else TimeDomain.PROCESSING_TIME
