"""``tickflow schemas register | check | list``: the topics' schemas in the schema registry."""

from __future__ import annotations

import argparse
import sys

from schemas.registry import (
    RegistryClient,
    RegistryError,
    check_against_git,
    check_against_registry,
    refusals,
    register_all,
    schema_files,
)
from tickflow.config import ConfigError, load_settings

REGISTRY = "registry"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickflow schemas",
        description="Each topic's Avro value schema under the subject <topic>-value, with the "
        "compatibility rule registry.compatibility (docs/schemas.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "register", help="set each subject's rule and register its committed schema (idempotent)"
    )
    check = commands.add_parser(
        "check", help="would the rule refuse the schema files as they are now? exit 1 if so"
    )
    check.add_argument(
        "--against",
        default=REGISTRY,
        metavar="registry|GIT_REF",
        help="the running registry (default), or every version committed in a git ref's "
        "history (no server: what CI runs)",
    )
    commands.add_parser("list", help="subjects, their rule, newest version and id")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        client = RegistryClient(settings.registry)
        if args.command == "register":
            for item in register_all(client, settings):
                what = "registered" if item.new else "unchanged"
                print(f"{item.subject}: id {item.schema_id}, version {item.version} ({what})")
            return 0
        if args.command == "list":
            for subject in schema_files(settings):
                versions = client.versions(subject)
                if not versions:
                    print(f"{subject}: not registered")
                    continue
                schema_id, _ = client.latest(subject)
                rule = client.compatibility(subject)
                print(f"{subject}: {rule}, version {versions[-1]}, id {schema_id}")
            return 0
        if args.against == REGISTRY:
            results = check_against_registry(client, settings)
        else:
            results = check_against_git(settings, args.against)
        problems = list(refusals(results))
        for line in problems:
            print(line, file=sys.stderr)
        where = "the registry" if args.against == REGISTRY else f"the history of {args.against}"
        rule = settings.registry.compatibility
        if problems:
            print(f"{len(problems)} refusal(s) under {rule} against {where}", file=sys.stderr)
            return 1
        print(f"{len(results)} schemas compatible under {rule} with {where}")
        return 0
    except (RegistryError, ConfigError) as error:
        print(f"tickflow schemas {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
