"""``tickflow api [serve] [--host H] [--port P]``: run the query API (127.0.0.1 by default);
``tickflow api keys create --scope read-live,read-history [--expires 30d] [--name N]
[--rate R --burst B]``, ``keys list``, ``keys revoke ID``: its API keys (docs/api.md)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from api.keys import SCOPES, KeyStore, parse_expiry, parse_scopes
from tickflow.config import ConfigError, load_settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickflow api", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the API (the default)")
    serve.add_argument("--host", help="bind address (default: api.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: api.port)")
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="a new key, printed once")
    create.add_argument("--scope", required=True, help=f"comma-separated: {', '.join(SCOPES)}")
    create.add_argument("--expires", help="30d, 12h, 90m, or an ISO 8601 time (default: never)")
    create.add_argument("--name", default="", help="who or what the key is for")
    create.add_argument(
        "--rate", type=float, default=0.0, help="requests/s (default: api.rate_per_s)"
    )
    create.add_argument("--burst", type=int, default=0, help="burst (default: api.burst)")
    ksub.add_parser("list", help="every key: id, scopes, expiry (never the key)")
    revoke = ksub.add_parser("revoke", help="delete a key")
    revoke.add_argument("id")
    return p


def _when(ms: int) -> str:
    if not ms:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tickflow api: configuration: {exc}", file=sys.stderr)
        return 2
    store = KeyStore(settings.api.keys_file)
    if args.command == "keys":
        if args.keys_command == "create":
            try:
                scopes = parse_scopes(args.scope)
                expires = parse_expiry(args.expires) if args.expires else 0
            except ValueError as exc:
                print(f"tickflow api keys: {exc}", file=sys.stderr)
                return 2
            if expires and expires <= time.time() * 1000:
                print("tickflow api keys: that expiry has passed", file=sys.stderr)
                return 2
            record, key = store.create(scopes, expires, args.name, args.rate, args.burst)
            print(key)
            print(
                f"id {record.id}, scopes {','.join(record.scopes)}, expires "
                f"{_when(record.expires_ms)}: shown once, stored hashed in {store.path}",
                file=sys.stderr,
            )
            return 0
        if args.keys_command == "list":
            for k in sorted(store.keys().values(), key=lambda k: k.created_ms):
                print(
                    f"{k.id}  {','.join(k.scopes):<32} created {_when(k.created_ms)}  "
                    f"expires {_when(k.expires_ms)}  {k.name}"
                )
            return 0
        if not store.revoke(args.id):
            print(f"tickflow api keys: no key {args.id}", file=sys.stderr)
            return 1
        print(f"revoked {args.id}")
        return 0

    import uvicorn

    from api.app import create_app

    host = getattr(args, "host", None) or settings.api.host
    port = getattr(args, "port", None) or settings.api.port
    print(f"tickflow api on http://{host}:{port} (OpenAPI: /openapi.json, docs: /docs)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
