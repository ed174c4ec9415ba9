"""The query API without servers (readers stood in for): API keys (missing, wrong, malformed,
expired, out of scope, revoked; stored hashed, 0600), the per-key token bucket and its 429 with
Retry-After, format negotiation (JSON, Arrow IPC, Parquet; decimals exact), keyset paging, the
errors (every one a documented 4xx with the JSON error body), and the key CLI."""

from __future__ import annotations

import base64
import io
import json
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from api.app import ARROW, NEXT_CURSOR, PARQUET, build_app, decode_cursor, encode_cursor
from api.data import Refused, Unavailable
from api.keys import KeyRefused, KeyStore, RateLimiter, digest, parse_expiry, parse_scopes
from jobs.book_at import BookAt, Interval, NoFrames
from jobs.sinks.book_reader import StoredBook, StoredNbbo
from jobs.sinks.clickhouse import COLUMNS
from jobs.sinks.queries import NBBO_SUMMARY_TYPES, history_order
from tickflow.config import load_settings
from tickflow.instruments import UnknownInstrument

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def trade(exchange: str, symbol: str, instrument: str, trade_id: str, t: int, price: str) -> tuple:
    return (
        date(2026, 11, 30), exchange, symbol, instrument, trade_id, price,
        "0.000000000000000001", "buy", t, t, t * 1_000_000, 1,
    )  # fmt: skip


def json_each_row(columns: Sequence[str], rows: list[tuple]) -> bytes:
    """Rows as ClickHouse's JSONEachRow gives them to the API (decimals already text)."""
    return b"".join(orjson.dumps(dict(zip(columns, r, strict=True))) + b"\n" for r in rows)


class FakeHistory:
    """Rows per table, filtered and ordered as history_sql does, for the paging tests."""

    def __init__(self, tables: Mapping[str, list[tuple]]) -> None:
        self.tables = tables
        self.calls: list[dict[str, Any]] = []
        self.down = False

    def rows(
        self,
        table: str,
        filters: Mapping[str, Any],
        from_ms: int,
        to_ms: int,
        after: Sequence[Any] | None,
        limit: int,
    ) -> bytes:
        if self.down:
            raise Unavailable("ClickHouse does not answer")
        self.calls.append({"table": table, "filters": dict(filters), "after": after})
        cols = COLUMNS[table]
        order = history_order(table, list(filters))
        time_col = order[0]
        out = []
        for row in self.tables.get(table, []):
            r = dict(zip(cols, row, strict=True))
            if all(r[k] == v for k, v in filters.items()) and from_ms <= r[time_col] < to_ms:
                out.append(row)
        out.sort(key=lambda row: [dict(zip(cols, row, strict=True))[c] for c in order])
        if after is not None:
            out = [
                row for row in out
                if [dict(zip(cols, row, strict=True))[c] for c in order] > list(after)
            ]  # fmt: skip
        return json_each_row(cols, out[:limit])

    def nbbo_summary(
        self, instrument: str, interval_ms: int, from_ms: int, to_ms: int, limit: int
    ) -> bytes:
        if self.down:
            raise Unavailable("ClickHouse does not answer")
        self.calls.append({"table": "nbbo_1s", "instrument": instrument, "from_ms": from_ms})
        rows = [r for r in self.tables.get("nbbo_1s", []) if from_ms <= r[0] < to_ms]
        return json_each_row(tuple(NBBO_SUMMARY_TYPES), rows[:limit])


class FakeLive:
    def __init__(self) -> None:
        self.book_ = StoredBook(
            "binance", "BTCUSDT", "BTC-USDT", "EXPIRED", "", 7,
            [("100.10", "1.5")], [("100.20", "2")], 1, 2, 3,
        )  # fmt: skip
        self.nbbo_ = StoredNbbo(
            "BTC-USDT", "USDT", False, "100.10", "1.5", ["binance"], "100.20", "2",
            ["binance"], False, False, ["binance:BTCUSDT"], {}, 1, 2, 3,
        )  # fmt: skip

    def books(self) -> list[StoredBook]:
        return [self.book_]

    def book(self, exchange: str, symbol: str) -> StoredBook | None:
        return self.book_ if (exchange, symbol) == ("binance", "BTCUSDT") else None

    def nbbos(self) -> list[StoredNbbo]:
        return [self.nbbo_]

    def nbbo(self, instrument: str) -> StoredNbbo | None:
        return self.nbbo_ if instrument == "BTC-USDT" else None


class FakeBooksAt:
    """binance BTCUSDT: LIVE at time 1000, in a gap at 2000, no frames before 500."""

    def __init__(self) -> None:
        self.down = False

    def at(self, exchange: str, symbol: str, at_ms: int, source: str) -> BookAt:
        if self.down:
            raise Unavailable("Kafka does not answer")
        if source == "archive":
            raise Refused("the raw archive is not available in this build")
        if (exchange, symbol) != ("binance", "BTCUSDT"):
            raise UnknownInstrument(f"{symbol!r} is not configured")
        if at_ms < 500:
            raise NoFrames("no frames of binance:BTCUSDT received then")
        live = at_ms < 2000
        return BookAt(
            "binance", "BTCUSDT", "BTC-USDT", at_ms, "LIVE" if live else "RESYNCING",
            "" if live else "gap: expected update 102, got U=105", 1_000_000_007, 101,
            990, 991_000_000, 900,
            [("100.10", "1.5"), ("100.00", "0.000000000000000001")] if live else [],
            [("100.20", "2")] if live else [],
            None if live else Interval(1990, None, "gap", "gap: expected update 102, got U=105"),
            1010, 0, 0, 10, 3, 0, "gaps",
        )  # fmt: skip


TRADES = [
    trade("binance", "BTCUSDT", "BTC-USDT", str(i), 1_000 + i // 2, f"100.{i:02d}0000000000000001")
    for i in range(10)
] + [trade("kraken", "BTC/USDT", "BTC-USDT", "k1", 1_001, "99.5")]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    wall = Clock(1_800_000_000.0)
    mono = Clock()
    store = KeyStore(tmp_path / "secrets" / "api-keys.json", clock=wall)
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=mono)
    history = FakeHistory({"trades": TRADES})
    books_at = FakeBooksAt()
    app = build_app(
        load_settings(environ={}), history, FakeLive(), store, limiter, books_at=books_at
    )
    _, hist = store.create(["read-history"], rate_per_s=1000, burst=1000)
    _, live = store.create(["read-live"], rate_per_s=1000, burst=1000)
    _, admin = store.create(["admin"], rate_per_s=1000, burst=1000)
    return {
        "client": TestClient(app), "store": store, "wall": wall, "mono": mono,
        "history": history, "books_at": books_at, "hist": hist, "live": live, "admin": admin,
        "app": app,
    }  # fmt: skip


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


TRADES_Q = "/v1/trades?exchange=binance&instrument=BTC-USDT&from_ms=0&to_ms=99999"


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["status"] == status and body["error"] == code and body["message"]
    return dict(body)


# --- keys -------------------------------------------------------------------------------------


def test_keys_are_stored_hashed_in_a_private_file(env: dict[str, Any]) -> None:
    store: KeyStore = env["store"]
    text = store.path.read_text()
    for key in (env["hist"], env["live"], env["admin"]):
        assert key not in text and key[17:] not in text
        assert digest(key) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700


def test_missing_wrong_malformed_and_expired_keys_get_401(env: dict[str, Any]) -> None:
    client, store, wall = env["client"], env["store"], env["wall"]
    r = client.get(TRADES_Q)
    assert_error(r, 401, "missing_key")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    good = env["hist"]
    wrong = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")  # right id, bad secret
    for bad in (wrong, "tfk_000000000000_" + "A" * 43, "not-a-key", good + "x"):
        assert_error(client.get(TRADES_Q, headers=auth(bad)), 401, "invalid_key")
    _, soon = store.create(["read-history"], expires_ms=int(wall.now * 1000) + 60_000)
    assert client.get(TRADES_Q, headers=auth(soon)).status_code == 200
    wall.now += 61
    body = assert_error(client.get(TRADES_Q, headers=auth(soon)), 401, "expired_key")
    assert soon not in body["message"]


def test_x_api_key_header_works_too(env: dict[str, Any]) -> None:
    r = env["client"].get(TRADES_Q, headers={"X-API-Key": env["hist"]})
    assert r.status_code == 200


def test_out_of_scope_keys_get_403_and_admin_reaches_everything(env: dict[str, Any]) -> None:
    client = env["client"]
    assert_error(client.get(TRADES_Q, headers=auth(env["live"])), 403, "out_of_scope")
    assert_error(client.get("/v1/live/books", headers=auth(env["hist"])), 403, "out_of_scope")
    assert client.get("/v1/live/books", headers=auth(env["live"])).status_code == 200
    assert client.get(TRADES_Q, headers=auth(env["admin"])).status_code == 200
    assert client.get("/v1/live/nbbo", headers=auth(env["admin"])).status_code == 200


def test_a_revoked_key_is_refused_by_the_running_app(env: dict[str, Any]) -> None:
    store: KeyStore = env["store"]
    record, key = store.create(["read-history"])
    assert env["client"].get(TRADES_Q, headers=auth(key)).status_code == 200
    assert store.revoke(record.id)
    assert_error(env["client"].get(TRADES_Q, headers=auth(key)), 401, "invalid_key")


def test_scopes_and_expiry_parsing() -> None:
    assert parse_scopes("read-live, read-history,read-live") == ("read-live", "read-history")
    with pytest.raises(ValueError):
        parse_scopes("read-live,write")
    with pytest.raises(ValueError):
        parse_scopes("")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_expiry("30d", now) == int(now.timestamp() * 1000) + 30 * 86_400_000
    assert parse_expiry("90m", now) == int(now.timestamp() * 1000) + 90 * 60_000
    assert (
        parse_expiry("2027-01-01", now) == int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()) * 1000
    )
    with pytest.raises(ValueError):
        parse_expiry("soon", now)


def test_verify_never_echoes_the_key(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "k.json")
    _, key = store.create(["admin"])
    with pytest.raises(KeyRefused) as info:
        store.verify(key[:-1] + ("a" if key[-1] != "a" else "b"))
    assert key[:-1] not in str(info.value)


# --- rate limits ------------------------------------------------------------------------------


def test_rate_limit_429_with_retry_after_then_refills(env: dict[str, Any]) -> None:
    client, store, mono = env["client"], env["store"], env["mono"]
    _, key = store.create(["read-history"])  # the configured 2/s, burst 3
    for _ in range(3):
        assert client.get(TRADES_Q, headers=auth(key)).status_code == 200
    r = client.get(TRADES_Q, headers=auth(key))
    assert_error(r, 429, "rate_limited")
    assert r.headers["Retry-After"] == "1"
    # other keys have buckets of their own
    assert client.get(TRADES_Q, headers=auth(env["hist"])).status_code == 200
    mono.now += 0.5  # one token at 2/s
    assert client.get(TRADES_Q, headers=auth(key)).status_code == 200
    assert client.get(TRADES_Q, headers=auth(key)).status_code == 429


def test_a_keys_own_rate_overrides_the_configured_one(env: dict[str, Any]) -> None:
    client, store, mono = env["client"], env["store"], env["mono"]
    _, key = store.create(["read-live"], rate_per_s=0.1, burst=1)
    assert client.get("/v1/live/nbbo", headers=auth(key)).status_code == 200
    r = client.get("/v1/live/nbbo", headers=auth(key))
    assert r.status_code == 429 and r.headers["Retry-After"] == "10"
    mono.now += 10
    assert client.get("/v1/live/nbbo", headers=auth(key)).status_code == 200


# --- history, formats, paging -----------------------------------------------------------------


def test_json_rows_are_exact_and_resolve_exchange_symbols(env: dict[str, Any]) -> None:
    client, history = env["client"], env["history"]
    for name in ("BTC-USDT", "btcusdt", "BTCUSDT"):
        r = client.get(TRADES_Q.replace("BTC-USDT", name), headers=auth(env["hist"]))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert history.calls[-1]["filters"] == {"exchange": "binance", "symbol": "BTCUSDT"}
    body = r.json()
    assert body["columns"] == list(COLUMNS["trades"])
    assert [row["trade_id"] for row in body["rows"]] == [str(i) for i in range(10)]
    assert body["rows"][3]["price"] == "100.030000000000000001"
    assert body["rows"][0]["date"] == "2026-11-30"
    assert body["next_cursor"] is None
    # an instrument across exchanges; a Kraken symbol names the canonical instrument
    r = client.get("/v1/trades?instrument=BTC/USDT&from_ms=0&to_ms=9999", headers=auth(env["hist"]))
    assert history.calls[-1]["filters"] == {"instrument": "BTC-USDT"}
    assert len(r.json()["rows"]) == 11
    # an instrument no longer configured still names its history
    client.get(TRADES_Q.replace("BTC-USDT", "bnb-btc"), headers=auth(env["hist"]))
    assert history.calls[-1]["filters"] == {"exchange": "binance", "instrument": "BNB-BTC"}


def test_paging_returns_every_row_once_in_order(env: dict[str, Any]) -> None:
    client = env["client"]
    seen, cursor, pages = [], None, 0
    while True:
        url = TRADES_Q + "&limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url, headers=auth(env["hist"])).json()
        seen += [row["trade_id"] for row in body["rows"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(i) for i in range(10)] and pages == 4


@pytest.mark.parametrize(
    ("how", "media"),
    [({"format": "arrow"}, ARROW), ({"format": "parquet"}, PARQUET), ("accept", ARROW),
     ("accept-parquet", PARQUET)],
)  # fmt: skip
def test_arrow_and_parquet_are_exact_decimals(env: dict[str, Any], how: Any, media: str) -> None:
    client = env["client"]
    headers = auth(env["hist"])
    params: dict[str, Any] = {"limit": 4}
    if how == "accept":
        headers["Accept"] = f"{ARROW}, application/json;q=0.5"
    elif how == "accept-parquet":
        headers["Accept"] = PARQUET
    else:
        params.update(how)
    r = client.get(TRADES_Q + "".join(f"&{k}={v}" for k, v in params.items()), headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == media
    if media == ARROW:
        table = pa.ipc.open_stream(r.content).read_all()
    else:
        table = pq.read_table(io.BytesIO(r.content))
    assert table.schema.field("price").type == pa.decimal128(38, 18)
    assert table.column("price").to_pylist()[3] == Decimal("100.030000000000000001")
    assert table.column("size").to_pylist()[0] == Decimal("1E-18")
    assert table.num_rows == 4
    # the next page's cursor in a header
    cursor = r.headers[NEXT_CURSOR]
    nxt = client.get(f"{TRADES_Q}&limit=100&cursor={cursor}", headers=auth(env["hist"]))
    assert [row["trade_id"] for row in nxt.json()["rows"]] == [str(i) for i in range(4, 10)]


def test_an_empty_page_in_arrow_has_the_schema(env: dict[str, Any]) -> None:
    r = env["client"].get(
        "/v1/nbbo?instrument=BTC-USDT&from_ms=0&to_ms=1&format=arrow", headers=auth(env["hist"])
    )
    table = pa.ipc.open_stream(r.content).read_all()
    assert table.num_rows == 0 and table.schema.field("bid_price").type == pa.decimal128(38, 18)


def _summary_row(w: int) -> tuple:
    # NBBO_SUMMARY_TYPES order, decimals as text (as the reader returns them)
    return (w, w + 999, 7, "100.1", "2", ["binance:BTCUSDT"], None, None, [], 0, 0)


def test_nbbo_summary_pages_in_every_format(env: dict[str, Any]) -> None:
    env["history"].tables = {**env["history"].tables,
                             "nbbo_1s": [_summary_row(w * 1000) for w in range(5)]}  # fmt: skip
    q = "/v1/nbbo-summary?instrument=btcusdt&from_ms=0&to_ms=86400000"
    client = env["client"]
    r = client.get(f"{q}&limit=3", headers=auth(env["hist"]))
    body = r.json()
    assert r.status_code == 200 and body["table"] == "nbbo_1s"
    assert [row["window_start_ms"] for row in body["rows"]] == [0, 1000, 2000]
    assert body["rows"][0]["bid_price"] == "100.1" and body["rows"][0]["ask_price"] is None
    assert env["history"].calls[-1]["instrument"] == "BTC-USDT"  # the symbol resolved
    nxt = client.get(f"{q}&limit=3&cursor={body['next_cursor']}", headers=auth(env["hist"]))
    assert [row["window_start_ms"] for row in nxt.json()["rows"]] == [3000, 4000]
    assert nxt.json()["next_cursor"] is None
    arrow = client.get(f"{q}&format=arrow", headers=auth(env["hist"]))
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.num_rows == 5 and table.schema.field("ask_price").type == pa.decimal128(38, 18)
    assert table.column("bid_price").to_pylist()[0] == Decimal("100.1")
    parquet = client.get(f"{q}&format=parquet", headers=auth(env["hist"]))
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 5
    bad = client.get(f"{q}&interval_ms=1500", headers=auth(env["hist"]))
    assert bad.status_code == 422
    assert_error(client.get(f"{q}&cursor=xyz", headers=auth(env["hist"])), 400, "bad_cursor")


def test_unacceptable_accept_is_406(env: dict[str, Any]) -> None:
    r = env["client"].get(TRADES_Q, headers={**auth(env["hist"]), "Accept": "text/csv"})
    assert_error(r, 406, "not_acceptable")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("/v1/trades?from_ms=0&to_ms=10", "bad_request"),
        ("/v1/trades?exchange=okx&from_ms=0&to_ms=10", "unknown_exchange"),
        (
            "/v1/trades?exchange=binance&instrument=DOGE/EUR&from_ms=0&to_ms=10",
            "unknown_instrument",
        ),
        ("/v1/trades?exchange=binance&from_ms=10&to_ms=10", "bad_range"),
        ("/v1/trades?exchange=binance&from_ms=0&to_ms=10&cursor=xyz", "bad_cursor"),
        ("/v1/nbbo?instrument=NOPE&from_ms=0&to_ms=10", "unknown_instrument"),
        ("/v1/live/nbbo/BTC_USD", "unknown_instrument"),
        ("/v1/bars?instrument=BTC-USDT&venue=okx&from_ms=0&to_ms=10", "unknown_exchange"),
        ("/v1/live/books/binance/NOPE", "unknown_instrument"),
    ],
)
def test_bad_requests_are_400(env: dict[str, Any], query: str, code: str) -> None:
    assert_error(env["client"].get(query, headers=auth(env["admin"])), 400, code)


def test_a_server_down_is_503_not_a_crash(env: dict[str, Any]) -> None:
    env["history"].down = True
    assert_error(env["client"].get(TRADES_Q, headers=auth(env["hist"])), 503, "unavailable")


def test_cursor_round_trip_and_refusals() -> None:
    order = history_order("trades", ["exchange", "symbol"])
    assert order == ("trade_time_ms", "trade_id")
    assert decode_cursor(encode_cursor([5, "a"]), order) == [5, "a"]
    assert decode_cursor(encode_cursor([5, "a"]), order, "trades") == [5, "a"]
    bad_values: list[list[Any]] = [[5], ["a", "b"], [True, "a"], [5, 6], [-1, "a"]]
    too_big = base64.urlsafe_b64encode(json.dumps([2**64, "a"]).encode()).decode()
    for bad in [*(encode_cursor(v) for v in bad_values), "%%", too_big]:
        with pytest.raises(Exception, match="cursor"):
            decode_cursor(bad, order, "trades")
    late = history_order("late_events", ["exchange"])
    assert late == ("event_time_ms", "symbol", "kind", "event_id")
    assert decode_cursor(encode_cursor([1, "s", "trade", "9"]), late, "late_events")
    with pytest.raises(Exception, match="cursor"):
        decode_cursor(encode_cursor([1, "s", 3, "9"]), late, "late_events")


# --- live -------------------------------------------------------------------------------------


def test_live_books_and_nbbo_show_the_lease(env: dict[str, Any]) -> None:
    client, key = env["client"], auth(env["live"])
    books = client.get("/v1/live/books?exchange=binance", headers=key).json()
    assert books[0]["status"] == "EXPIRED" and books[0]["bids"] == [
        {"price": "100.10", "size": "1.5"}
    ]
    assert client.get("/v1/live/books?exchange=kraken", headers=key).json() == []
    one = client.get("/v1/live/books/binance/BTC-USDT", headers=key).json()
    assert one["symbol"] == "BTCUSDT"
    assert_error(client.get("/v1/live/books/kraken/BTC-USD", headers=key), 404, "not_found")
    nbbo = client.get("/v1/live/nbbo/BTCUSDT", headers=key).json()
    assert nbbo["status"] == "EXPIRED" and nbbo["bid_price"] == "100.10"


# --- a book as of a time ----------------------------------------------------------------------


def test_a_book_as_of_a_time_has_every_level_exact(env: dict[str, Any]) -> None:
    client, key = env["client"], auth(env["hist"])
    for when in ("1000", "1970-01-01T00:00:01Z", "1970-01-01T00:00:01.000"):
        r = client.get(f"/v1/books/binance/BTC-USDT/at?time={when}", headers=key)
        assert r.status_code == 200, r.text
        book = r.json()
        assert (book["symbol"], book["status"], book["at_ms"]) == ("BTCUSDT", "LIVE", 1000)
        assert book["bids"] == [
            {"price": "100.10", "size": "1.5"},
            {"price": "100.00", "size": "0.000000000000000001"},
        ]
        assert (book["version"], book["seq"], book["gap"]) == (1_000_000_007, 101, None)
    gap = client.get("/v1/books/binance/BTCUSDT/at?time=2000", headers=key).json()
    assert gap["status"] == "RESYNCING" and gap["bids"] == [] and gap["asks"] == []
    assert gap["gap"] == {
        "start_ms": 1990, "end_ms": None, "kind": "gap",
        "reason": "gap: expected update 102, got U=105",
    }  # fmt: skip


def test_a_book_as_of_a_time_refuses_clearly(env: dict[str, Any]) -> None:
    client, key = env["client"], auth(env["admin"])
    path = "/v1/books/binance/BTCUSDT/at"
    assert_error(client.get(f"{path}?time=yesterday", headers=key), 400, "bad_time")
    assert_error(client.get(f"{path}?time=0", headers=key), 400, "bad_time")
    assert_error(client.get("/v1/books/okx/BTCUSDT/at?time=1000", headers=key), 400,
                 "unknown_exchange")  # fmt: skip
    assert_error(client.get("/v1/books/binance/NOPE/at?time=1000", headers=key), 400,
                 "unknown_instrument")  # fmt: skip
    assert_error(client.get(f"{path}?time=1000&source=archive", headers=key), 400, "bad_source")
    assert client.get(f"{path}?time=1000&source=s3", headers=key).status_code == 422
    assert client.get(path, headers=key).status_code == 422  # no time
    body = assert_error(client.get(f"{path}?time=100", headers=key), 404, "not_found")
    assert "no frames of binance:BTCUSDT" in body["message"]
    assert_error(client.get(f"{path}?time=1000", headers=auth(env["live"])), 403, "out_of_scope")
    env["books_at"].down = True
    assert_error(client.get(f"{path}?time=1000", headers=key), 503, "unavailable")


# --- OpenAPI ----------------------------------------------------------------------------------


def test_openapi_documents_every_error_status(env: dict[str, Any]) -> None:
    spec = env["client"].get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    for path, methods in spec["paths"].items():
        for method in methods.values():
            if path != "/v1/health":
                assert {"401", "403", "429", "503"} <= set(method["responses"]), path
    assert set(spec["paths"]["/v1/replay"]) == {"post"}
    trades = spec["paths"]["/v1/trades"]["get"]["responses"]["200"]["content"]
    assert {"application/json", ARROW, PARQUET} <= set(trades)
    assert env["client"].get("/docs").status_code == 200


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_creates_lists_and_revokes_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from api import cli

    keys_file = tmp_path / "keys.json"
    monkeypatch.setenv("TICKFLOW__API__KEYS_FILE", str(keys_file))
    assert cli.main(["keys", "create", "--scope", "read-live,read-history", "--expires", "1d"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("tfk_") and key not in err and key not in keys_file.read_text()
    record = KeyStore(keys_file).verify(key)
    assert record.scopes == ("read-live", "read-history") and record.expires_ms
    assert cli.main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert record.id in listed and key not in listed
    assert cli.main(["keys", "create", "--scope", "write"]) == 2
    assert cli.main(["keys", "create", "--scope", "admin", "--expires", "2001-01-01"]) == 2
    assert cli.main(["keys", "revoke", record.id]) == 0
    assert cli.main(["keys", "revoke", record.id]) == 1
    assert json.loads(keys_file.read_text()) == {"keys": []}


def test_no_key_reaches_the_logs(env: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    client, good = env["client"], env["hist"]
    wrong = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for key in (good, wrong, env["live"]):
        client.get(TRADES_Q, headers=auth(key))
    assert "refused" in caplog.text
    for key in (good, wrong, env["live"]):
        assert key[17:] not in caplog.text


def test_history_sql_pages_on_a_current_clickhouse() -> None:
    """The page query (FINAL, filters, keyset cursor, LIMIT) on chdb: pages of two rows give
    every FINAL row once, in order."""
    chdb_session = pytest.importorskip("chdb.session")
    from jobs.sinks.clickhouse import TABLES
    from jobs.sinks.queries import history_sql

    session = chdb_session.Session()
    try:
        session.query("CREATE DATABASE IF NOT EXISTS apitest")
        session.query(TABLES["trades"].format(db="apitest"))
        rows = [
            f"('2026-11-30','binance','BTCUSDT','BTC-USDT','{i}',1.{i}00000000000000001,2,'buy',"
            f"{1795996800000 + i // 2},1,1,1)"
            for i in range(7)
        ]
        session.query(f"INSERT INTO apitest.trades VALUES {','.join(rows + rows)}")

        def page(after: list[Any] | None) -> list[list[Any]]:
            sql = history_sql("trades", ["exchange", "symbol"], after is not None, "apitest")
            params = {"exchange": "'binance'", "symbol": "'BTCUSDT'", "from_ms": "1795996800000",
                      "to_ms": "1795996900000", "limit": "2"}  # fmt: skip
            for i, v in enumerate(after or []):
                params[f"after_{i}"] = str(v) if isinstance(v, int) else f"'{v}'"
            for name, value in params.items():
                sql = sql.replace(f"%({name})s", value)
            return list(json.loads(session.query(sql, "JSONCompact").bytes())["data"])

        seen: list[list[Any]] = []
        after = None
        while True:
            got = page(after)
            seen += got
            if len(got) < 2:
                break
            last = dict(zip(COLUMNS["trades"], got[-1], strict=True))
            after = [int(last["trade_time_ms"]), last["trade_id"]]
        assert [r[4] for r in seen] == [str(i) for i in range(7)]
        assert seen[3][5] == "1.300000000000000001"
    finally:
        session.cleanup()
