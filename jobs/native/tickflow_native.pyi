"""tickflow's compiled core (jobs/native): the books operator's logic, per bundle of frames for
the live job (NativeStream) and per raw-topic partition for the backfill (NativePartition)."""

from typing import TypedDict

TABLES: list[str]

class UnknownWriterSchemas(ValueError):
    """A framed raw record names writer schema ids not learned; ``args[0]``: those ids. The
    bundle or batch was not applied: learn them and call again."""

def learn_writer_schema(schema_id: int, schema: str | None) -> str | None:
    """Learn a registry id's writer schema (None: the registry has none); None when its
    records can be read, else why not (they become dead letters with that reason)."""

def knows_writer_schema(schema_id: int) -> bool: ...

class OpenGap(TypedDict):
    """A book's not-in-sync interval still open (the `gaps` table's columns)."""

    start_ms: int  # receive time of the frame that took the book out of sync
    start_version: int
    kind: str  # startup | gap | checksum | sync_lost | crossed | internal_error
    reason: str
    seq_before: int  # -1: none
    messages: int
    dropped: int

class Halt(TypedDict):
    """The held book's first book event stamped later than its cutoff (not applied)."""

    event_time_ms: int
    receive_time_ns: int
    snapshot: bool
    first_id: int
    last_id: int
    outcome: str | None  # what it would have done to the book: applied, gap, ignored, ...

class BookState(TypedDict):
    """One book's full state out of the batch engine (as of its cutoff, when held)."""

    status: str  # LIVE | RESYNCING
    reason: str
    version: int
    seq: int  # last update id applied, -1: none
    event_time_ms: int  # latest exchange time applied, 0: none
    receive_time_ns: int
    synced_ms: int  # receive time of the snapshot that last rebuilt it
    bids: list[tuple[str, str]]  # every level kept, best first; none unless LIVE
    asks: list[tuple[str, str]]
    gap: OpenGap | None
    halt: Halt | None

class NativePartition:
    def __init__(
        self,
        *,
        top_n: int,
        snapshot_interval_ms: int,
        max_levels: int,
        max_buffered: int,
        nbbo_stale_after_ms: int,
        bar_intervals_ms: list[int],
        depth_band_bps: str,
        trade_dedup_ms: int,
        quote_equivalents: list[tuple[str, str]],
        out_of_orderness_ms: int,
        only: list[str],
        others: list[str],
        max_event_ahead_ms: int | None = None,
        max_event_behind_ms: int | None = None,
        write_rows: bool = True,
    ) -> None: ...
    def hold_book(self, exchange: str, symbol: str, at_ms: int) -> None: ...
    @property
    def halted(self) -> bool: ...
    def book(self, exchange: str, symbol: str) -> BookState | None: ...
    def feed_batch(self, values: list[bytes], timestamps: list[int]) -> None: ...
    def finish(self) -> None: ...
    def take_tables(self, min_rows: int) -> list[tuple[str, bytes, int]]: ...
    def take_dead_letters(self) -> list[tuple[str, bytes, bool]]: ...
    def counts(self) -> dict[str, int]: ...
    @property
    def watermark_ms(self) -> int: ...

OUTPUTS: list[str]

class NativeStream:
    """The live job's core: bundles of raw frames per instrument in, one sink blob and the
    conflated Redis writes out, each instrument's state as bytes."""

    def __init__(
        self,
        *,
        top_n: int,
        snapshot_interval_ms: int,
        max_levels: int,
        max_buffered: int,
        nbbo_stale_after_ms: int,
        bar_intervals_ms: list[int],
        depth_band_bps: str,
        trade_dedup_ms: int,
        quote_equivalents: list[tuple[str, str]],
        stale_after_ms: int,
        resync_retry_ms: int,
        redis_prefix: str,
        max_event_ahead_ms: int | None = None,
        max_event_behind_ms: int | None = None,
    ) -> None: ...
    def has(self, key: str) -> bool: ...
    def snapshot(self, key: str) -> bytes | None: ...
    def restore(self, key: str, state: bytes) -> None: ...
    def process_bundle(self, key: str, bundle: bytes, watermark_ms: int, now_ms: int) -> bool: ...
    def advance(self, key: str, watermark_ms: int) -> None: ...
    def next_event_time_ms(self, key: str) -> int | None: ...
    def housekeeping(self, key: str, now_ms: int) -> tuple[int, bool]: ...
    def books_not_live(self, key: str) -> int: ...
    def take_blob(self) -> bytes | None: ...
    @property
    def redis_pending(self) -> int: ...
    def take_redis(self, publish_time_ns: int) -> list[tuple[bool, list[str], list[bytes]]]: ...
    def take_counts(self) -> dict[str, int]: ...
