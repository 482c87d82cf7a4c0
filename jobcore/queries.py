"""The service's SQL: the named statements of `jobcore/sql/queries.sql`, read once at import.

`QueryName` lists the names, so a misspelt name is a type error; the file and the list are
checked against each other when this module loads. Only jobcore.store and jobcore.keys.store
run the statements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, get_args

QUERIES_FILE: Final = Path(__file__).resolve().parent / "sql" / "queries.sql"

QueryName = Literal[
    "ping",
    "get_job",
    "get_job_by_request_id",
    "get_jobs_by_request_ids",
    "tenant_unfinished_jobs",
    "tenant_events_after",
    "tenant_last_event_position",
    "list_jobs",
    "events_after",
    "create_jobs",
    "claim_jobs",
    "job_numbers",
    "renew_leases",
    "finish_jobs",
    "cancel_job",
    "requeue_expired",
    "mark_undispatched",
    "take_undispatched",
    "purge_finished",
    "insert_api_key",
    "list_api_keys",
    "revoke_api_key",
    "api_key_ring",
]

_HEADER = re.compile(r"^-- name: (?P<name>[a-z_]+)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement: its description (the comment above it) and its SQL, as sent."""

    name: str
    description: str
    sql: str


def parse_queries(text: str) -> dict[str, Query]:
    """The named blocks of a queries file, in file order (text before the first is ignored).

    A block's leading comment lines are its description; the rest, without the closing
    semicolon, is its SQL (one statement, which is what a prepared statement may hold).
    """
    headers = list(_HEADER.finditer(text))
    queries: dict[str, Query] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        name = header["name"]
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        end = following.start() if following is not None else len(text)
        lines = text[header.end() : end].strip().splitlines()
        comment = 0
        while comment < len(lines) and lines[comment].startswith("--"):
            comment += 1
        description = " ".join(line.removeprefix("--").strip() for line in lines[:comment])
        sql = "\n".join(lines[comment:]).strip().removesuffix(";").rstrip()
        if not sql:
            raise ValueError(f"query {name!r} has no SQL")
        queries[name] = Query(name=name, description=description, sql=sql)
    return queries


def _load() -> Mapping[QueryName, Query]:
    queries = parse_queries(QUERIES_FILE.read_text(encoding="utf-8"))
    declared = set(get_args(QueryName))
    if set(queries) != declared:
        raise RuntimeError(
            f"{QUERIES_FILE.name} and QueryName disagree: only in the file "
            f"{sorted(set(queries) - declared)}, only in QueryName {sorted(declared - set(queries))}"
        )
    return MappingProxyType(queries)  # type: ignore[arg-type]  # names checked just above


QUERIES: Final[Mapping[QueryName, Query]] = _load()
