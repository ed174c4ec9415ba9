"""The API variant of ``bench.clickhouse_queries`` (``--api``): each documented 1-day query's
endpoint of the query API (``api/``) on the bench database, as a research client sees it.

The API runs in process (uvicorn in a thread) on a free loopback port, with a key generated
into a temporary key store and no rate limit. Each request is timed from sending it to the
last page parsed (following ``next_cursor`` / ``X-Next-Cursor``, pages of
``api.max_page_rows``): JSON with orjson, Arrow IPC with pyarrow, Parquet with pyarrow. The
full-resolution NBBO day (1.5 million changes, every column, 15 pages) is timed in Arrow
only, for comparison: the documented NBBO day is ``/v1/nbbo-summary``. Trade-through and
late-event counts have no endpoint (aggregates, not rows: run the SQL).
"""

from __future__ import annotations

import dataclasses
import io
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from bench.stats import median
from tickflow.config import Settings

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T0_MS = 1_795_996_800_000  # bench.clickhouse_queries.DAY 00:00 UTC
QUERIED = "BTC-USD"
FORMATS = ("json", "arrow", "parquet")
HTTP_TIMEOUT_S = 600
START_TIMEOUT_S = 30.0

DAY = {"from_ms": T0_MS, "to_ms": T0_MS + DAY_MS}
HOUR = {"from_ms": T0_MS + 12 * HOUR_MS, "to_ms": T0_MS + 13 * HOUR_MS}

# name (as in bench.clickhouse_queries) -> (path, params, formats, a documented 1-day query)
ENDPOINTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...], bool]] = {
    "bars_1s_day": ("/v1/bars", {"instrument": QUERIED, "venue": "ALL", "interval_ms": 1000,
                                 **DAY}, FORMATS, True),
    "bars_1m_day": ("/v1/bars", {"instrument": QUERIED, "venue": "ALL", "interval_ms": 60000,
                                 **DAY}, FORMATS, True),
    "nbbo_summary_1s_day": ("/v1/nbbo-summary", {"instrument": QUERIED, "interval_ms": 1000,
                                                 **DAY}, FORMATS, True),
    "nbbo_summary_1m_day": ("/v1/nbbo-summary", {"instrument": QUERIED, "interval_ms": 60000,
                                                 **DAY}, FORMATS, True),
    "nbbo_history_hour": ("/v1/nbbo", {"instrument": QUERIED, **HOUR}, FORMATS, False),
    "nbbo_history_full_day": ("/v1/nbbo", {"instrument": QUERIED, **DAY}, ("arrow",), False),
    # every column of the table (the API serves tables), not the SQL's lean projection
    "matched_trades_day": ("/v1/matched-trades", {"exchange": "binance", "instrument": QUERIED,
                                                  **DAY}, FORMATS, True),
    "matched_trades_detail_hour": ("/v1/matched-trades", {"exchange": "binance",
                                                          "instrument": QUERIED, **HOUR},
                                   FORMATS, False),
}  # fmt: skip
NO_ENDPOINT = ("trade_through_counts_day", "late_event_counts_day")


class ApiServer:
    """The API on ``database`` in a thread, on a free loopback port, with one read key."""

    def __init__(self, settings: Settings, database: str, keys_dir: Path) -> None:
        import uvicorn

        from api.app import build_app
        from api.data import ClickHouseHistory
        from api.keys import KeyStore, RateLimiter

        store = KeyStore(keys_dir / "api-keys.json")
        _, self.key = store.create(["read-history"], name="bench")
        config = dataclasses.replace(settings.clickhouse, database=database)
        app = build_app(settings, ClickHouseHistory(config), None, store, RateLimiter(0, 0))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, name="bench-api", daemon=True)
        self.max_page_rows = settings.api.max_page_rows

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the API did not start on 127.0.0.1:{self.port}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=START_TIMEOUT_S)

    def get(self, path: str, params: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.key}"})
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.read(), dict(resp.headers)

    def fetch_all(self, path: str, params: dict[str, Any], fmt: str) -> tuple[float, int, int]:
        """Every page of the request in ``fmt``, parsed: ms, rows, pages."""
        query = {**params, "format": fmt, "limit": self.max_page_rows}
        rows = pages = 0
        started = time.perf_counter()
        while True:
            body, headers = self.get(path, query)
            pages += 1
            if fmt == "json":
                page = orjson.loads(body)
                rows += len(page["rows"])
                cursor = page["next_cursor"]
            else:
                if fmt == "arrow":
                    table = pa.ipc.open_stream(body).read_all()
                else:
                    table = pq.read_table(io.BytesIO(body))
                rows += table.num_rows
                cursor = headers.get("X-Next-Cursor") or headers.get("x-next-cursor")
            if not cursor:
                return (time.perf_counter() - started) * 1000, rows, pages
            query["cursor"] = cursor


def time_api(settings: Settings, database: str, runs: int) -> dict[str, Any]:
    """Each endpoint in each of its formats: the median of ``runs`` (after one untimed
    run), rows and pages."""
    out: dict[str, Any] = {
        "api": "in process (uvicorn), loopback, no rate limit; client: urllib + orjson / "
               "pyarrow, every page parsed",
        "runs": runs,
        "no_endpoint": list(NO_ENDPOINT),
        "endpoints": {},
    }
    print(f"{'API endpoint':>28} {'format':>8} {'rows':>9} {'pages':>6} {'ms':>9}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, ApiServer(settings, database, Path(tmp)) as api:
        for name, (path, params, formats, one_day) in ENDPOINTS.items():
            entry: dict[str, Any] = {"path": path, "params": params, "one_day": one_day}
            for fmt in formats:
                api.fetch_all(path, params, fmt)  # warm: the server's caches and the app's
                timings = [api.fetch_all(path, params, fmt) for _ in range(runs)]
                ms = round(median([t[0] for t in timings]), 1)
                rows, pages = timings[-1][1], timings[-1][2]
                entry[fmt] = {"ms_median": ms, "ms": [round(t[0], 1) for t in timings],
                              "rows": rows, "pages": pages}  # fmt: skip
                print(f"{name:>28} {fmt:>8} {rows:>9} {pages:>6} {ms:>9}", flush=True)
            out["endpoints"][name] = entry
    return out
