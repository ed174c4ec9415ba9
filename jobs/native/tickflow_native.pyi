"""tickflow's compiled batch engine (jobs/native): the books operator's logic over one
raw-topic partition, rows out as ClickHouse RowBinary."""

TABLES: list[str]

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
    ) -> None: ...
    def feed_batch(self, values: list[bytes], timestamps: list[int]) -> None: ...
    def finish(self) -> None: ...
    def take_tables(self, min_rows: int) -> list[tuple[str, bytes, int]]: ...
    def take_dead_letters(self) -> list[tuple[str, bytes, bool]]: ...
    def counts(self) -> dict[str, int]: ...
    @property
    def watermark_ms(self) -> int: ...
