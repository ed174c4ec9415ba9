"""Where the API reads: ClickHouse through ``jobs.sinks.queries`` (history) and Redis through
``jobs.sinks.book_reader`` (live books and NBBOs, with the job's lease: EXPIRED as every reader
takes it). The app takes these as protocols, so its tests can stand in for the servers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from jobs.archive.layout import ArchiveError
from jobs.book_at import BookAt, NoFrames, book_at
from jobs.export import HttpQueryError, json_rows_from_http
from jobs.frames import frame_source
from jobs.sinks.book_reader import (
    StoredBook,
    StoredNbbo,
    read_all_books,
    read_all_nbbos,
    read_book,
    read_nbbo,
)
from jobs.sinks.queries import history_order, history_sql, nbbo_summary_page_sql
from tickflow.config import ClickHouseConfig, RedisConfig, Settings


class Unavailable(Exception):
    """A server the request needs does not answer (the API answers 503)."""


class Refused(Exception):
    """The request names something this server cannot serve (the API answers 400)."""


class History(Protocol):
    def rows(
        self,
        table: str,
        filters: Mapping[str, Any],
        from_ms: int,
        to_ms: int,
        after: Sequence[Any] | None,
        limit: int,
    ) -> bytes:
        """A page of ``table``'s FINAL rows as JSONEachRow (``COLUMNS`` order, decimals as
        text) in ``history_order``; ``after``: the order values of the previous page's last
        row."""
        ...

    def nbbo_summary(
        self, instrument: str, interval_ms: int, from_ms: int, to_ms: int, limit: int
    ) -> bytes:
        """The NBBO per window of ``interval_ms`` as JSONEachRow (``NBBO_SUMMARY_TYPES``,
        decimals as text) with from_ms <= window start < to_ms, at most ``limit`` windows."""
        ...


class Live(Protocol):
    def books(self) -> list[StoredBook]: ...

    def book(self, exchange: str, symbol: str) -> StoredBook | None: ...

    def nbbos(self) -> list[StoredNbbo]: ...

    def nbbo(self, instrument: str) -> StoredNbbo | None: ...


class BooksAt(Protocol):
    def at(self, exchange: str, symbol: str, at_ms: int, source: str) -> BookAt:
        """The book as of ``at_ms`` (``jobs.book_at``) from the frames of ``source`` (kafka,
        archive): UnknownInstrument for an unknown book, NoFrames when the raw frames hold
        nothing of it then, Refused for a source not available, Unavailable when Kafka does
        not answer."""
        ...


class RawFrameBooks:
    """Books rebuilt from the raw frames through the compiled core (``jobs.book_at``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def at(self, exchange: str, symbol: str, at_ms: int, source: str) -> BookAt:
        from confluent_kafka import KafkaException

        try:
            frames = frame_source(self.settings, source)
        except Exception as exc:  # an unknown kind, or a source not set up here
            raise Refused(str(exc)) from None
        try:
            return book_at(self.settings, frames, exchange, symbol, at_ms)
        except ArchiveError as exc:  # none there, or files that do not add up
            raise NoFrames(f"the raw archive: {exc}") from None
        except KafkaException as exc:
            raise Unavailable(f"Kafka does not answer: {exc}") from None
        except RuntimeError as exc:  # no raw topic, or the broker went quiet mid-read
            if "not found" in str(exc):
                raise NoFrames(str(exc)) from None
            raise Unavailable(str(exc)) from None
        finally:
            close = getattr(frames, "close", None)  # a source's own connections, if it keeps any
            if close is not None:
                close()


class ClickHouseHistory:
    """Pages over ClickHouse's HTTP interface as JSONEachRow: the app passes them on as JSON
    or parses them into Arrow (``jobs.export.arrow_from_json_rows``) without a Python object
    per value."""

    def __init__(self, config: ClickHouseConfig, database: str | None = None) -> None:
        self.config = config
        self.database = database or config.database

    def rows(
        self,
        table: str,
        filters: Mapping[str, Any],
        from_ms: int,
        to_ms: int,
        after: Sequence[Any] | None,
        limit: int,
    ) -> bytes:
        sql = history_sql(table, list(filters), after is not None, self.database)
        params: dict[str, Any] = {**filters, "from_ms": from_ms, "to_ms": to_ms, "limit": limit}
        for i, value in enumerate(after or ()):
            params[f"after_{i}"] = value
        return self._execute(sql, params)

    def nbbo_summary(
        self, instrument: str, interval_ms: int, from_ms: int, to_ms: int, limit: int
    ) -> bytes:
        params = {"instrument": instrument, "interval_ms": interval_ms, "from_ms": from_ms,
                  "to_ms": to_ms, "limit": limit}  # fmt: skip
        return self._execute(nbbo_summary_page_sql(self.database), params)

    def _execute(self, sql: str, params: dict[str, Any]) -> bytes:
        try:
            return json_rows_from_http(self.config, sql, params)
        except HttpQueryError as exc:
            if exc.code in (60, 81):  # UNKNOWN_TABLE / UNKNOWN_DATABASE: nothing written yet
                return b""
            raise Unavailable(f"ClickHouse refused the query: code {exc.code}") from None
        except OSError as exc:
            raise Unavailable(
                f"ClickHouse does not answer at {self.config.host}:{self.config.http_port}: "
                f"{exc.__class__.__name__}"
            ) from None

    @staticmethod
    def order(table: str, filters: Sequence[str]) -> tuple[str, ...]:
        return history_order(table, filters)


class RedisLive:
    def __init__(self, config: RedisConfig) -> None:
        self.config = config

    def _call(self, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(self.config, *args)
        except redis.RedisError as exc:
            raise Unavailable(
                f"Redis does not answer at {self.config.host}:{self.config.port}: "
                f"{exc.__class__.__name__}"
            ) from None

    def books(self) -> list[StoredBook]:
        return list(self._call(read_all_books))

    def book(self, exchange: str, symbol: str) -> StoredBook | None:
        result: StoredBook | None = self._call(read_book, exchange, symbol)
        return result

    def nbbos(self) -> list[StoredNbbo]:
        return list(self._call(read_all_nbbos))

    def nbbo(self, instrument: str) -> StoredNbbo | None:
        result: StoredNbbo | None = self._call(read_nbbo, instrument)
        return result
