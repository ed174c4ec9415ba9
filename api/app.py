"""The research query API: the ClickHouse tables by time range and the live Redis books and
NBBOs, as JSON, Arrow IPC or Parquet, behind API keys with scopes and per-key rate limits.

``create_app(settings)`` builds it on the configured servers; ``build_app`` takes the readers,
key store and limiter (tests pass their own). docs/api.md describes every endpoint.
"""

import asyncio
import base64
import dataclasses
import functools
import io
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from enum import StrEnum
from typing import Annotated, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.data import (
    BooksAt,
    ClickHouseHistory,
    History,
    Live,
    RawFrameBooks,
    RedisLive,
    Refused,
    Unavailable,
)
from api.keys import ApiKey, KeyRefused, KeyStore, RateLimiter, retry_after_header
from jobs.backtest import KIND_NAMES, Backtest, event_record
from jobs.book_at import NoFrames, parse_time
from jobs.export import arrow_from_json_rows, arrow_schema, arrow_type
from jobs.frames import FrameSource, frame_source
from jobs.sinks.clickhouse import COLUMNS, column_types
from jobs.sinks.queries import ALL_VENUES, NBBO_SUMMARY_TYPES, history_order
from jobs.sinks.redis_books import async_redis_client
from tickflow.config import RedisConfig, Settings
from tickflow.instruments import UnknownInstrument, exchange_symbols, resolve_symbol

log = logging.getLogger("tickflow.api")

ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
JSON = "application/json"
NDJSON = "application/x-ndjson"
NEXT_CURSOR = "X-Next-Cursor"
_CANONICAL = re.compile(r"[A-Z0-9]{1,20}-[A-Z0-9]{1,20}")  # BASE-QUOTE


class Format(StrEnum):
    json = "json"
    arrow = "arrow"
    parquet = "parquet"


_MEDIA = {Format.json: JSON, Format.arrow: ARROW, Format.parquet: PARQUET}

NBBO_SUMMARY_SCHEMA = pa.schema(
    [
        pa.field(name, arrow_type(kind), nullable=kind.startswith("Nullable("))
        for name, kind in NBBO_SUMMARY_TYPES.items()
    ]
)


class FrameKind(StrEnum):
    """Where the raw frames are read (``jobs.frames``)."""

    kafka = "kafka"
    archive = "archive"


# --- errors -----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    status: int = Field(description="the HTTP status")
    error: str = Field(description="a stable code: missing_key, invalid_key, expired_key, ...")
    message: str = Field(description="what went wrong, for a person")


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def _error_response(status: int, description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error_response(401, "no API key, an unknown or wrong one, or an expired one"),
    403: _error_response(403, "the key lacks the endpoint's scope"),
    429: {
        **_error_response(429, "the key's rate limit: retry after `Retry-After` seconds"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
}
QUERY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    400: _error_response(400, "a bad instrument, exchange, range or cursor"),
    406: _error_response(406, "an Accept header naming no format the API serves"),
    503: _error_response(503, "ClickHouse or Redis does not answer"),
}


# --- authentication ---------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


def _require(scope: str) -> Callable[..., Any]:
    def check(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header_key: Annotated[str | None, Depends(_header_key)],
    ) -> ApiKey:
        store: KeyStore = request.app.state.keys
        limiter: RateLimiter = request.app.state.limiter
        text = bearer.credentials if bearer else header_key
        try:
            key = store.verify(text)
        except KeyRefused as exc:
            raise ApiError(
                401, f"{exc.reason}_key", str(exc), {"WWW-Authenticate": "Bearer"}
            ) from None
        if not key.allows(scope):
            raise ApiError(
                403, "out_of_scope",
                f"the API key {key.id} has scopes {', '.join(key.scopes)}; this needs {scope}",
            )  # fmt: skip
        wait = limiter.take(key)
        if wait > 0:
            raise ApiError(
                429, "rate_limited",
                f"the API key {key.id} is over its rate limit; retry in {wait:.2f} s",
                {"Retry-After": retry_after_header(wait)},
            )  # fmt: skip
        request.state.key_id = key.id  # for the access log: the id, never the key
        return key

    return check


# --- formats ----------------------------------------------------------------------------------


def _negotiate(request: Request, fmt: Format | None) -> Format:
    if fmt is not None:
        return fmt
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return Format.json
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for media, chosen in ((ARROW, Format.arrow), (PARQUET, Format.parquet)):
        if media in types:
            return chosen
    if any(t in (JSON, "application/*", "*/*") for t in types):
        return Format.json
    raise ApiError(
        406, "not_acceptable", f"the API serves {JSON}, {ARROW} and {PARQUET} (or format=)"
    )


def _table_bytes(table: pa.Table, fmt: Format) -> bytes:
    sink = io.BytesIO()
    if fmt is Format.arrow:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


# --- cursors ----------------------------------------------------------------------------------


def encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode().rstrip("=")


def _fits(value: Any, kind: str) -> bool:
    """Whether a cursor value can be compared with a column of this ClickHouse type."""
    if kind.startswith("UInt"):
        bits = int(kind[4:])
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**bits
    if not isinstance(value, str):
        return False
    if kind.startswith("Enum8("):
        return value in re.findall(r"'([^']*)' = ", kind)
    return kind == "String"


def decode_cursor(text: str, order: Sequence[str], table: str = "") -> list[Any]:
    """The values of a cursor; 400 unless they fit ``order``'s columns (of ``table``)."""
    try:
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        values = None
    types = column_types(table) if table else {}
    if (
        not isinstance(values, list)
        or len(values) != len(order)
        or not isinstance(values[0], int)
        or not all(_fits(v, types.get(c, "UInt64" if i == 0 else "String"))
                   for i, (c, v) in enumerate(zip(order, values, strict=True)))
    ):  # fmt: skip
        raise ApiError(400, "bad_cursor", "the cursor is not one this query returned")
    return values


# --- response models --------------------------------------------------------------------------

# ClickHouse's DateTime (the partition date of a time) ends in 2106: so do the ranges
MAX_MS = 4_294_967_295_999


class Page(BaseModel):
    table: str = Field(description="the ClickHouse table read")
    columns: list[str] = Field(description="every row's fields, in the table's column order")
    rows: list[dict[str, Any]] = Field(
        description="decimals as exact strings; times as integer ms / ns; dates YYYY-MM-DD"
    )
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null: this was the last page"
    )


class BookLevel(BaseModel):
    price: str
    size: str


class Book(BaseModel):
    exchange: str
    symbol: str
    instrument: str
    status: str = Field(description="LIVE, RESYNCING, STALE, or EXPIRED (the job's lease ran out)")
    reason: str
    seq: int
    bids: list[BookLevel]
    asks: list[BookLevel]
    event_time_ms: int
    receive_time_ns: int
    publish_time_ns: int


class Interval(BaseModel):
    start_ms: int = Field(description="receive time of the frame that took the book out of sync")
    end_ms: int | None = Field(description="receive time it was in sync again; null: open")
    kind: str = Field(description="startup, gap, checksum, sync_lost, crossed, ... (gaps table)")
    reason: str


class BookAtTime(BaseModel):
    exchange: str
    symbol: str
    instrument: str
    at_ms: int = Field(description="the time asked for: exchange time, epoch ms")
    status: str = Field(
        description="LIVE: in sync at that time, the levels exact; RESYNCING: not in sync then "
        "(or not known exactly): no levels, `reason` and `gap` say why"
    )
    reason: str
    version: int = Field(description="the book's version, as in Redis and top_of_book")
    seq: int = Field(description="the last update id applied (-1: none; Kraken: 0)")
    event_time_ms: int = Field(description="exchange time of the last book event applied")
    receive_time_ns: int
    synced_ms: int = Field(description="receive time of the snapshot the book was rebuilt from")
    bids: list[BookLevel] = Field(description="every level the core keeps, best first")
    asks: list[BookLevel]
    gap: Interval | None = Field(description="the not-in-sync interval the time falls in")
    next_event_time_ms: int | None = Field(
        description="exchange time of the book's first event after the time (null: none came "
        "within the lookahead)"
    )
    partition: int = Field(description="the raw-topic partition read")
    start_offset: int
    end_offset: int
    frames: int = Field(description="records read to rebuild it")
    scan_from_ms: int = Field(description="receive time the read started at")
    sync_point: str = Field(
        description="gaps: the start located from the gaps table; bounded: a bounded scan"
    )


class Nbbo(BaseModel):
    instrument: str
    quote: str
    status: str = Field(description="LIVE, or EXPIRED when the job's lease ran out")
    bid_price: str | None
    bid_size: str | None
    bid_venues: list[str]
    ask_price: str | None
    ask_size: str | None
    ask_venues: list[str]
    locked: bool
    crossed: bool
    venues: list[str]
    excluded: dict[str, str]
    event_time_ms: int
    receive_time_ns: int
    publish_time_ns: int


class Health(BaseModel):
    status: str


EventKind = StrEnum("EventKind", {name: name for name in KIND_NAMES})  # type: ignore[misc]


class ReplayRequest(BaseModel):
    from_ms: int = Field(ge=0, le=MAX_MS, description="range start, epoch ms")
    to_ms: int = Field(ge=0, le=MAX_MS, description="range end, epoch ms, exclusive")
    instruments: list[Annotated[str, Field(max_length=64)]] = Field(
        min_length=1, max_length=64, description="canonical names or exchange symbols"
    )
    kinds: list[EventKind] | None = Field(
        default=None, max_length=len(KIND_NAMES), description="event kinds (default: all)"
    )
    max_events: int | None = Field(
        default=None, ge=1, description="stop after this many (at most api.replay_max_events)"
    )


# --- the app ----------------------------------------------------------------------------------

TIME_FROM = Annotated[int, Query(ge=0, le=MAX_MS, description="range start, epoch ms, inclusive")]
TIME_TO = Annotated[int, Query(ge=0, le=MAX_MS, description="range end, epoch ms, exclusive")]
FMT = Annotated[Format | None, Query(alias="format", description="overrides the Accept header")]
CURSOR = Annotated[
    str | None, Query(max_length=4096, description="`next_cursor` of the previous page")
]
EXCHANGE = Annotated[str | None, Query(max_length=64, description="binance, coinbase, kraken")]
INSTRUMENT = Annotated[
    str | None,
    Query(
        max_length=64,
        description="canonical (BTC-USDT) or, with `exchange`, the exchange's symbol (BTCUSDT)",
    ),
]

HISTORY_DOC = (
    "Rows with `from_ms <= time < to_ms`, ordered by time then the row's identity, at most "
    "`limit` per page; the next page: the same request with `cursor=<next_cursor>` (JSON) or "
    f"the `{NEXT_CURSOR}` header (Arrow, Parquet). Formats: JSON (default), Arrow IPC stream "
    f"(`Accept: {ARROW}` or `format=arrow`) and Parquet (`Accept: {PARQUET}` or "
    "`format=parquet`), decimals exact: strings in JSON, decimal128(38, 18) in Arrow/Parquet."
)


def _history_content() -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "one page of rows",
            "content": {
                ARROW: {"schema": {"type": "string", "format": "binary"}},
                PARQUET: {"schema": {"type": "string", "format": "binary"}},
            },
            "headers": {
                NEXT_CURSOR: {
                    "schema": {"type": "string"},
                    "description": "the next page's cursor; absent on the last page",
                }
            },
        },
        **QUERY_RESPONSES,
    }


def build_app(
    settings: Settings,
    history: History | None,
    live: Live | None,
    keys: KeyStore,
    limiter: RateLimiter,
    stream: Callable[[int | None], AsyncIterator[bytes]] | None = None,
    frames: Callable[[], FrameSource] | None = None,
    books_at: BooksAt | None = None,
) -> FastAPI:
    """The app on these readers (None: the endpoints that need one answer 503); ``stream``
    yields the server-sent events of the live channels (``redis_events``); ``frames`` opens
    the raw frames the replay endpoint runs through the core; ``books_at`` rebuilds books as
    of a time from the raw frames."""
    app = FastAPI(
        title="tickflow query API",
        version="1",
        description=(
            "Research access to the pipeline's ClickHouse tables and live Redis books. "
            "Every endpoint but /v1/health needs an API key (`tickflow api keys create`)."
        ),
    )
    app.state.keys = keys
    app.state.limiter = limiter
    api = settings.api

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        log.info("refused %s %s: %d %s", request.method, request.url.path, exc.status, exc.code)
        body = {"error": {"status": exc.status, "error": exc.code, "message": exc.message}}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON: 400) in the API's error body
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        body = {"error": {"status": exc.status_code, "error": code.get(exc.status_code, "http"),
                          "message": str(exc.detail)}}  # fmt: skip
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    def _history() -> History:
        if history is None:
            raise ApiError(503, "unavailable", "no ClickHouse configured")
        return history

    def _live() -> Live:
        if live is None:
            raise ApiError(503, "unavailable", "no Redis configured")
        return live

    def _symbols(exchange: str) -> Mapping[str, str]:
        try:
            return exchange_symbols(settings.exchanges, exchange)
        except UnknownInstrument as exc:
            raise ApiError(400, "unknown_exchange", str(exc)) from None

    def _canonical(instrument: str) -> str:
        """A canonical instrument, also from any exchange's own symbol; a canonical name that
        is no longer configured still names its stored history."""
        for exchange in (f.name for f in dataclasses.fields(settings.exchanges)):
            symbols = _symbols(exchange)
            try:
                return symbols[resolve_symbol(symbols, instrument)]
            except UnknownInstrument:
                continue
        if _CANONICAL.fullmatch(instrument.upper()):
            return instrument.upper()
        raise ApiError(
            400, "unknown_instrument",
            f"{instrument!r} is neither a configured symbol nor an instrument (BASE-QUOTE)",
        )  # fmt: skip

    def _book_filters(exchange: str | None, instrument: str | None) -> dict[str, Any]:
        if exchange is None and instrument is None:
            raise ApiError(400, "bad_request", "name an instrument, an exchange, or both")
        if exchange is None:
            return {"instrument": _canonical(str(instrument))}
        symbols = _symbols(exchange)
        if instrument is None:
            return {"exchange": exchange}
        try:
            return {"exchange": exchange, "symbol": resolve_symbol(symbols, instrument)}
        except UnknownInstrument as exc:
            if _CANONICAL.fullmatch(instrument.upper()):  # history of an unconfigured one
                return {"exchange": exchange, "instrument": instrument.upper()}
            raise ApiError(400, "unknown_instrument", str(exc)) from None

    def _page(
        request: Request,
        table: str,
        filters: dict[str, Any],
        from_ms: int,
        to_ms: int,
        limit: int | None,
        cursor: str | None,
        fmt: Format | None,
    ) -> Response:
        chosen = _negotiate(request, fmt)
        if to_ms <= from_ms:
            raise ApiError(400, "bad_range", "to_ms must be after from_ms")
        limit = limit or api.default_page_rows
        if limit > api.max_page_rows:
            raise ApiError(400, "bad_limit", f"limit is at most {api.max_page_rows}")
        order = history_order(table, list(filters))
        after = decode_cursor(cursor, order, table) if cursor else None
        try:
            body = _history().rows(table, filters, from_ms, to_ms, after, limit)
        except Unavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        return _respond(chosen, table, COLUMNS[table], arrow_schema(table), body, order, limit)

    def _respond(
        chosen: Format,
        table: str,
        columns: Sequence[str],
        schema: pa.Schema,
        body: bytes,
        order: Sequence[str],
        limit: int,
    ) -> Response:
        """A page from its JSONEachRow rows: passed on as JSON, or parsed into Arrow."""
        lines = body.splitlines()  # a row a line (JSON escapes newlines in strings)
        next_cursor = None
        if len(lines) == limit:
            last = orjson.loads(lines[-1])
            next_cursor = encode_cursor([last[c] for c in order])
        if chosen is Format.json:
            content = b"".join([
                b'{"table":', orjson.dumps(table), b',"columns":', orjson.dumps(list(columns)),
                b',"rows":[', b",".join(lines), b'],"next_cursor":', orjson.dumps(next_cursor),
                b"}",
            ])  # fmt: skip
            return Response(content, media_type=JSON)
        data = arrow_from_json_rows(body, schema)
        headers = {NEXT_CURSOR: next_cursor} if next_cursor else {}
        return Response(_table_bytes(data, chosen), media_type=_MEDIA[chosen], headers=headers)

    history_args: dict[str, Any] = {
        "response_model": Page,
        "responses": _history_content(),
        "tags": ["history"],
    }
    LIMIT = Annotated[int | None, Query(ge=1, le=api.max_page_rows, description="rows per page")]
    read_history = Depends(_require("read-history"))
    read_live = Depends(_require("read-live"))

    @app.get("/v1/health", response_model=Health, tags=["meta"])
    def health() -> Health:
        """No key needed: whether the API runs."""
        return Health(status="ok")

    def _exchange_table(table: str, what: str) -> None:
        def endpoint(
            request: Request,
            from_ms: TIME_FROM,
            to_ms: TIME_TO,
            key: Annotated[ApiKey, read_history],
            exchange: EXCHANGE = None,
            instrument: INSTRUMENT = None,
            limit: LIMIT = None,
            cursor: CURSOR = None,
            fmt: FMT = None,
        ) -> Response:
            filters = _book_filters(exchange, instrument)
            return _page(request, table, filters, from_ms, to_ms, limit, cursor, fmt)

        endpoint.__doc__ = f"{what} of an instrument and/or exchange. {HISTORY_DOC}"
        name = table.replace("_", "-")
        app.get(f"/v1/{name}", summary=what, operation_id=table, **history_args)(endpoint)

    _exchange_table("trades", "Trades (`trades`)")
    _exchange_table("matched_trades", "Trades matched to the book and NBBO (`matched_trades`)")
    _exchange_table("top_of_book", "Top-of-book changes (`top_of_book`)")
    _exchange_table("late_events", "Events that arrived behind the watermark (`late_events`)")

    @app.get("/v1/nbbo", summary="NBBO history (`nbbo`)", operation_id="nbbo", **history_args)
    def nbbo_history(
        request: Request,
        instrument: Annotated[str, Query(max_length=64, description="canonical or a symbol")],
        from_ms: TIME_FROM,
        to_ms: TIME_TO,
        key: Annotated[ApiKey, read_history],
        limit: LIMIT = None,
        cursor: CURSOR = None,
        fmt: FMT = None,
    ) -> Response:
        """The cross-exchange best bid and offer of an instrument, each change."""
        filters = {"instrument": _canonical(instrument)}
        return _page(request, "nbbo", filters, from_ms, to_ms, limit, cursor, fmt)

    nbbo_history.__doc__ = f"{nbbo_history.__doc__} {HISTORY_DOC}"

    @app.get(
        "/v1/nbbo-summary",
        summary="NBBO per second or coarser (`nbbo_1s`)",
        operation_id="nbbo_summary",
        **history_args,
    )
    def nbbo_summary(
        request: Request,
        instrument: Annotated[str, Query(max_length=64, description="canonical or a symbol")],
        from_ms: TIME_FROM,
        to_ms: TIME_TO,
        key: Annotated[ApiKey, read_history],
        interval_ms: Annotated[
            int, Query(ge=1000, le=86_400_000, multiple_of=1000, description="window length")
        ] = 1000,
        limit: LIMIT = None,
        cursor: CURSOR = None,
        fmt: FMT = None,
    ) -> Response:
        """The NBBO of an instrument per window (by window start): the change that ended it,
        i.e. the state it was in at the window's end; a window without a change has no row.
        A day at 1 s is at most 86,400 rows (every change: `/v1/nbbo`, an hour at a time)."""
        chosen = _negotiate(request, fmt)
        if to_ms <= from_ms:
            raise ApiError(400, "bad_range", "to_ms must be after from_ms")
        limit = limit or api.default_page_rows
        if limit > api.max_page_rows:
            raise ApiError(400, "bad_limit", f"limit is at most {api.max_page_rows}")
        start = from_ms
        if cursor:  # the last window of the previous page: go on after it
            start = decode_cursor(cursor, ("window_start_ms",))[0] + interval_ms
        name = _canonical(instrument)
        try:
            body = (
                _history().nbbo_summary(name, interval_ms, start, to_ms, limit)
                if start < to_ms else b""
            )  # fmt: skip
        except Unavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        columns = tuple(NBBO_SUMMARY_TYPES)
        return _respond(
            chosen, "nbbo_1s", columns, NBBO_SUMMARY_SCHEMA, body, ("window_start_ms",), limit
        )

    nbbo_summary.__doc__ = f"{nbbo_summary.__doc__} {HISTORY_DOC}"

    @app.get("/v1/bars", summary="Bars (`bars`)", operation_id="bars", **history_args)
    def bars(
        request: Request,
        instrument: Annotated[str, Query(max_length=64, description="canonical or a symbol")],
        from_ms: TIME_FROM,
        to_ms: TIME_TO,
        key: Annotated[ApiKey, read_history],
        venue: Annotated[
            str, Query(max_length=64, description=f"an exchange or {ALL_VENUES}")
        ] = ALL_VENUES,
        interval_ms: Annotated[
            int, Query(ge=1, lt=2**32, description="bar length: 1000 or 60000")
        ] = 60000,
        limit: LIMIT = None,
        cursor: CURSOR = None,
        fmt: FMT = None,
    ) -> Response:
        """OHLCV, VWAP, spread, depth and order-flow imbalance per window (by window start)."""
        if venue != ALL_VENUES:
            _symbols(venue)
        filters = {"instrument": _canonical(instrument), "venue": venue, "interval_ms": interval_ms}
        return _page(request, "bars", filters, from_ms, to_ms, limit, cursor, fmt)

    bars.__doc__ = f"{bars.__doc__} {HISTORY_DOC}"

    @app.get(
        "/v1/books/{exchange}/{instrument}/at",
        response_model=BookAtTime,
        responses={
            **AUTH_RESPONSES,
            400: _error_response(400, "an unknown exchange or instrument, a bad time or source"),
            404: _error_response(404, "the raw frames hold nothing of the book at that time"),
            503: _error_response(503, "Kafka does not answer"),
        },
        tags=["history"],
        summary="A book as of a time, rebuilt from the raw frames",
    )
    def book_at_time(
        exchange: str,
        instrument: str,
        key: Annotated[ApiKey, read_history],
        time: Annotated[
            str,
            Query(
                max_length=64,
                description="exchange time: epoch ms or ISO 8601 (2026-12-05T12:03:07.250Z)",
            ),
        ],
        source: Annotated[
            FrameKind, Query(description="where the raw frames are read")
        ] = FrameKind.kafka,
    ) -> BookAtTime:
        """One exchange's full book of an instrument (canonical, or the exchange's symbol) as
        of a time, the exchange's: the book after every update stamped at or before it, rebuilt
        exactly from the book's last snapshot before it and the updates after, through the
        compiled core (docs/api.md). A time at which the book was not in sync reads RESYNCING,
        without levels, with the interval. JSON only."""
        try:
            at_ms = parse_time(time)
        except ValueError as exc:
            raise ApiError(400, "bad_time", str(exc)) from None
        try:
            symbol = resolve_symbol(_symbols(exchange), instrument)
        except UnknownInstrument as exc:
            raise ApiError(400, "unknown_instrument", str(exc)) from None
        if books_at is None:
            raise ApiError(503, "unavailable", "no raw frames configured")
        try:
            book = books_at.at(exchange, symbol, at_ms, source.value)
        except UnknownInstrument as exc:
            raise ApiError(400, "unknown_instrument", str(exc)) from None
        except Refused as exc:
            raise ApiError(400, "bad_source", str(exc)) from None
        except NoFrames as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        except Unavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        return BookAtTime(**book.as_json())

    # --- live ---------------------------------------------------------------------------------

    def _book(b: Any) -> Book:
        data = asdict(b)
        data["bids"] = [{"price": p, "size": s} for p, s in b.bids]
        data["asks"] = [{"price": p, "size": s} for p, s in b.asks]
        return Book(**data)

    def _nbbo(n: Any) -> Nbbo:
        data = asdict(n)
        data["status"] = "LIVE" if data.pop("live") else "EXPIRED"
        return Nbbo(**data)

    live_responses = {**AUTH_RESPONSES, 400: QUERY_RESPONSES[400], 503: QUERY_RESPONSES[503]}

    @app.get("/v1/live/books", response_model=list[Book], responses=live_responses, tags=["live"])
    def live_books(
        key: Annotated[ApiKey, read_live],
        exchange: EXCHANGE = None,
        instrument: Annotated[
            str | None, Query(max_length=64, description="canonical instrument")
        ] = None,
    ) -> list[Book]:
        """Every book in Redis (or one exchange's, or one instrument's). A LIVE book whose
        lease ran out (the job stopped writing it) reads EXPIRED."""
        if exchange is not None:
            _symbols(exchange)
        wanted = _canonical(instrument) if instrument else None
        try:
            books = _live().books()
        except Unavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        return [
            _book(b)
            for b in books
            if (exchange is None or b.exchange == exchange)
            and (wanted is None or b.instrument == wanted)
        ]

    @app.get(
        "/v1/live/books/{exchange}/{instrument}",
        response_model=Book,
        responses={**live_responses, 404: _error_response(404, "no such book in Redis")},
        tags=["live"],
    )
    def live_book(
        exchange: str,
        instrument: str,
        key: Annotated[ApiKey, read_live],
    ) -> Book:
        """One exchange's book of an instrument (canonical, or the exchange's symbol)."""
        try:
            symbol = resolve_symbol(_symbols(exchange), instrument)
        except UnknownInstrument as exc:
            raise ApiError(400, "unknown_instrument", str(exc)) from None
        try:
            book = _live().book(exchange, symbol)
        except Unavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        if book is None:
            raise ApiError(404, "not_found", f"no book for {exchange}:{symbol} in Redis")
        return _book(book)

    @app.get("/v1/live/nbbo", response_model=list[Nbbo], responses=live_responses, tags=["live"])
    def live_nbbos(key: Annotated[ApiKey, read_live]) -> list[Nbbo]:
        """Every instrument's NBBO; EXPIRED once the job's lease ran out."""
        try:
            return [_nbbo(n) for n in _live().nbbos()]
        except Unavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None

    @app.get(
        "/v1/live/nbbo/{instrument}",
        response_model=Nbbo,
        responses={**live_responses, 404: _error_response(404, "no NBBO in Redis")},
        tags=["live"],
    )
    def live_nbbo(instrument: str, key: Annotated[ApiKey, read_live]) -> Nbbo:
        """One instrument's NBBO (canonical name, or an exchange's symbol)."""
        canonical = _canonical(instrument)
        try:
            found = _live().nbbo(canonical)
        except Unavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from None
        if found is None:
            raise ApiError(404, "not_found", f"no NBBO for {canonical} in Redis")
        return _nbbo(found)

    @app.get(
        "/v1/live/stream",
        responses={
            200: {
                "description": "Server-sent events: `book` and `nbbo`, as the job publishes",
                "content": {
                    "text/event-stream": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "event": {"type": "string", "enum": ["book", "nbbo"]},
                                "data": {"type": "string"},
                            },
                            "required": ["event", "data"],
                        }
                    }
                },
            },
            **live_responses,
        },
        response_class=StreamingResponse,
        tags=["live"],
    )
    async def live_stream(
        key: Annotated[ApiKey, read_live],
        events: Annotated[
            int | None, Query(ge=1, le=1_000_000, description="stop after this many events")
        ] = None,
    ) -> StreamingResponse:
        """Every accepted book and NBBO write as it happens (the job's Redis channels
        `<p>:book-updates`, data `<exchange>:<symbol>:<seq>:<status>:<version>`, and
        `<p>:nbbo-updates`, data `<instrument>:<version>`); read the state from the live
        endpoints. A comment line every 15 s keeps the connection open."""
        if stream is None:
            raise ApiError(503, "unavailable", "no Redis configured")
        return StreamingResponse(
            stream(events), media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip

    # --- replay -------------------------------------------------------------------------------

    replay_scope = Depends(_require("replay"))

    @app.post(
        "/v1/replay",
        summary="Replay a range through the job's core (the backtest's event stream)",
        operation_id="replay",
        responses={
            200: {
                "description": (
                    "NDJSON, one event a line in delivery order: `{\"time_ms\", \"kind\", "
                    "\"event\"}`, then `{\"kind\": \"end\", ...}` with the counts and digests "
                    "per kind and whether `max_events` cut the stream (`truncated`), or "
                    "`{\"kind\": \"error\", \"message\"}` if reading failed part-way"
                ),
                "content": {NDJSON: {"schema": {"type": "string"}}},
            },
            **QUERY_RESPONSES,
        },
        response_class=StreamingResponse,
        tags=["replay"],
    )
    def replay(
        body: ReplayRequest, key: Annotated[ApiKey, replay_scope]
    ) -> StreamingResponse:
        """The raw frames of `[from_ms, to_ms)` (Kafka record time) of the instruments' NBBO
        groups through the live job's compiled core, as `tickflow backtest` delivers them to a
        strategy: every top-of-book change, book snapshot, NBBO, trade, matched trade, bar,
        late event and gap row, in event-time order (docs/backtest.md). At most
        `api.replay_max_range_ms` of range and `api.replay_max_events` events."""
        if body.to_ms <= body.from_ms:
            raise ApiError(400, "bad_range", "to_ms must be after from_ms")
        if body.to_ms - body.from_ms > api.replay_max_range_ms:
            raise ApiError(
                400, "bad_range",
                f"a replay covers at most {api.replay_max_range_ms} ms; split the range",
            )  # fmt: skip
        limit = body.max_events or api.replay_max_events
        if limit > api.replay_max_events:
            raise ApiError(400, "bad_limit", f"max_events is at most {api.replay_max_events}")
        instruments = sorted({_canonical(i) for i in body.instruments})
        kinds = [k.value for k in body.kinds] if body.kinds else None
        if frames is None:
            raise ApiError(503, "unavailable", "no frame source configured")
        try:
            backtest = Backtest(
                settings, frames(), body.from_ms, body.to_ms, instruments, kinds=kinds
            )
            backtest.prepare()  # the source's offsets now: a broker that is down is a 503
        except Exception as exc:
            log.warning("replay source unavailable: %s", exc)
            raise ApiError(
                503, "unavailable", f"the raw frames cannot be read: {exc.__class__.__name__}"
            ) from None
        return StreamingResponse(
            _replay_lines(backtest, limit), media_type=NDJSON,
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip

    return app


def _replay_lines(backtest: Backtest, limit: int) -> Iterator[bytes]:
    """The replay's NDJSON lines: the events, then the end (or an error) line."""
    sent: Counter[str] = Counter()
    truncated = False
    events = backtest.events()
    try:
        for at_ms, event in events:
            if sent.total() >= limit:
                truncated = True
                break
            line = {"time_ms": at_ms, "kind": event.kind, "event": event_record(event)}
            yield orjson.dumps(line) + b"\n"
            sent[event.kind] += 1
    except Exception as exc:  # the status is sent: the stream says what went wrong
        log.warning("replay failed part-way: %s", exc)
        yield orjson.dumps({"kind": "error", "message": f"{exc.__class__.__name__}: {exc}"})
        yield b"\n"
        return
    finally:
        events.close()
    result = backtest.result
    # a cut stream's digests would cover events it did not send: only a whole one has them
    end = {
        "kind": "end", "events": sent.total(), "truncated": truncated,
        "counts": dict(sent), "digests": {} if truncated else result.digests,
        "frames": result.frames, "late_deliveries": result.late_deliveries,
        "dead_letters": result.dead_letters,
    }  # fmt: skip
    yield orjson.dumps(end) + b"\n"


async def redis_events(config: RedisConfig, limit: int | None) -> AsyncIterator[bytes]:
    """Server-sent events from the job's update channels: ``event: book`` / ``event: nbbo``
    with the channel's message as data, until ``limit`` events (None: until the client goes)."""
    client = async_redis_client(config, decode_responses=True)
    channels = {f"{config.key_prefix}:book-updates": "book",
                f"{config.key_prefix}:nbbo-updates": "nbbo"}  # fmt: skip
    pubsub = client.pubsub()
    sent = 0
    try:
        await pubsub.subscribe(*channels)
        yield b": subscribed\n\n"
        while limit is None or sent < limit:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=15.0)
            if message is None:
                yield b": keep-alive\n\n"
                continue
            event = channels.get(message["channel"], "message")
            yield f"event: {event}\ndata: {message['data']}\n\n".encode()
            sent += 1
    except asyncio.CancelledError:
        raise
    finally:
        await pubsub.aclose()
        await client.aclose()


def create_app(settings: Settings) -> FastAPI:
    """The API on the configured ClickHouse and Redis, keys in ``api.keys_file``."""
    return build_app(
        settings,
        history=ClickHouseHistory(settings.clickhouse),
        live=RedisLive(settings.redis),
        keys=KeyStore(settings.api.keys_file),
        limiter=RateLimiter(settings.api.rate_per_s, settings.api.burst),
        stream=functools.partial(redis_events, settings.redis),
        frames=functools.partial(frame_source, settings, settings.api.replay_source),
        books_at=RawFrameBooks(settings),
    )
