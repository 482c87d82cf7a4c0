"""How the commands show jobs: JSON lines for programs, a live rich display for people."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from jobs.v1 import jobs_service_pb2 as pb
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {
    pb.PENDING: "yellow",
    pb.IN_PROGRESS: "cyan",
    pb.SUCCESS: "bold green",
    pb.FAILED: "bold red",
    pb.CANCELLED: "magenta",
}
# Doubles print as integers while they are exact ones, as the REST API shows them.
_EXACT_INTEGER_LIMIT = 2**53


class BatchView(Protocol):
    """Receives the jobs of `submit --count` as they are submitted and as they finish."""

    def submitted(self, job: pb.Job) -> None:
        """A job was accepted."""

    def finished(self, job: pb.Job) -> None:
        """A watched job reached its final state."""


class Output(Protocol):
    """What every command renders; one implementation per audience."""

    def job(self, job: pb.Job) -> None:
        """Show one job (submit, status, result, cancel)."""

    def follow(self, job: pb.Job) -> AbstractContextManager[Callable[[pb.WatchJobResponse], None]]:
        """Show a watch of `job` (maybe only its id yet); the context yields the update handler."""

    def follow_many(
        self, job_ids: Sequence[str]
    ) -> AbstractContextManager[Callable[[pb.WatchJobsResponse], None]]:
        """Show a watch of several jobs: each one's state now, then its changes (no heartbeats)."""

    def batch(self, *, count: int, watch: bool) -> AbstractContextManager[BatchView]:
        """Show `submit --count`: progress of submitted and (with `watch`) finished jobs."""

    def jobs(self, jobs: Sequence[pb.Job]) -> None:
        """Show a page of `list`."""

    def new_api_key(self, created: pb.CreateApiKeyResponse) -> None:
        """Show a key just made, with its secret (`keys create`)."""

    def api_keys(self, keys: Sequence[pb.ApiKey]) -> None:
        """Show keys without secrets (`keys list`, `keys revoke`)."""


def choose_output(*, json_lines: bool) -> Output:
    """JSON lines when asked for or when stdout is not a terminal (piped, redirected)."""
    if json_lines or not sys.stdout.isatty():
        return JsonOutput()
    return TerminalOutput(Console(highlight=False))


def to_json(message: Message) -> str:
    """One line of proto3 JSON with the proto field names (`created_at`), as REST clients see them."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def api_key_json(api_key: pb.ApiKey, *, key: str | None = None) -> dict[str, object]:
    """A key as one flat JSON object: every ApiKey field (null for a time not set), and `key`
    when it was just made; `python -m jobcore.keys --json` prints the same shape."""
    fields = json_format.MessageToDict(
        api_key, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    described: dict[str, object] = {"id": fields.pop("id")}
    if key is not None:
        described["key"] = key
    described |= fields
    for moment in ("expires_at", "revoked_at"):
        described.setdefault(moment, None)
    return described


class JsonOutput:
    """One JSON object per line: per job, or per watch event (heartbeats are not events)."""

    def _line(self, message: Message) -> None:
        print(to_json(message), flush=True)  # flushed, so a reader of the pipe sees each event

    def job(self, job: pb.Job) -> None:
        """Print the job."""
        self._line(job)

    def jobs(self, jobs: Sequence[pb.Job]) -> None:
        """Print each job on its own line."""
        for job in jobs:
            self._line(job)

    def new_api_key(self, created: pb.CreateApiKeyResponse) -> None:
        """Print the key's fields and the key itself, on one line."""
        print(json.dumps(api_key_json(created.api_key, key=created.key)), flush=True)

    def api_keys(self, keys: Sequence[pb.ApiKey]) -> None:
        """Print each key on its own line."""
        for api_key in keys:
            print(json.dumps(api_key_json(api_key)), flush=True)

    @contextlib.contextmanager
    def follow(self, job: pb.Job) -> Iterator[Callable[[pb.WatchJobResponse], None]]:
        """Print each state change as a WatchJobResponse (`job` and `sequence`)."""

        def show(update: pb.WatchJobResponse) -> None:
            if not update.heartbeat:
                self._line(update)

        yield show

    @contextlib.contextmanager
    def follow_many(
        self, job_ids: Sequence[str]
    ) -> Iterator[Callable[[pb.WatchJobsResponse], None]]:
        """Print each job's state now (`job`), then each change (`job`, `sequence`, `cursor`)."""
        yield self._line

    @contextlib.contextmanager
    def batch(self, *, count: int, watch: bool) -> Iterator[BatchView]:
        """Print each job once: when submitted, or with `watch` when finished."""
        yield _JsonBatch(self, watch=watch)


class _JsonBatch:
    def __init__(self, output: JsonOutput, *, watch: bool) -> None:
        self._output = output
        self._watch = watch

    def submitted(self, job: pb.Job) -> None:
        if not self._watch:
            self._output.job(job)

    def finished(self, job: pb.Job) -> None:
        self._output.job(job)


def format_number(value: float) -> str:
    """14.0 as `14`, 0.05 as `0.05`: the shortest text that reads back as the same double."""
    if value.is_integer() and abs(value) < _EXACT_INTEGER_LIMIT:
        return str(int(value))
    return repr(value)


def status_text(job: pb.Job) -> Text:
    """The status name in its colour."""
    return Text(pb.JobStatus.Name(job.status), style=STATUS_STYLES.get(job.status, ""))


def outcome_text(job: pb.Job) -> Text:
    """`result 14` or `error …` for a finished job; empty before."""
    if job.result.HasField("result"):
        return Text.assemble("result ", (format_number(job.result.result), "bold"))
    if job.result.HasField("error"):
        return Text(f"error: {job.result.error}", style="red")
    return Text()


class TerminalOutput:
    """A table per job, a live status line per watch and progress bars per batch."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def job(self, job: pb.Job) -> None:
        """Print the job's fields, one per row."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        table.add_column()
        table.add_row("id", job.id)
        table.add_row("status", status_text(job))
        table.add_row("operation", pb.Operation.Name(job.operation))
        if job.HasField("result"):
            table.add_row("result" if job.result.HasField("result") else "error", outcome_text(job))
        if job.attempts:
            table.add_row("attempts", str(job.attempts))
        table.add_row("created", job.created_at.ToJsonString())
        table.add_row("updated", job.updated_at.ToJsonString())
        self._console.print(table)

    def new_api_key(self, created: pb.CreateApiKeyResponse) -> None:
        """The key's fields, then the key with a warning that it is shown this once."""
        self.api_keys([created.api_key])
        self._console.print(
            "\nThe key, shown only this once (the service keeps only its hash):", style="bold"
        )
        self._console.print(f"  {created.key}", soft_wrap=True)
        self._console.print(f"export JOBS_API_KEY={created.key}", soft_wrap=True, style="dim")

    def api_keys(self, keys: Sequence[pb.ApiKey]) -> None:
        """One row per key, newest first; revoked and expired keys say so."""
        table = Table(
            "id", "prefix", "tenant", "scopes", "name", "expires", "state", box=None, padding=(0, 2)
        )
        now = time.time()
        for api_key in keys:
            table.add_row(
                api_key.id,
                api_key.prefix,
                api_key.tenant,
                ",".join(api_key.scopes),
                api_key.name,
                api_key.expires_at.ToJsonString() if api_key.HasField("expires_at") else "never",
                _key_state(api_key, now=now),
            )
        self._console.print(table)

    def jobs(self, jobs: Sequence[pb.Job]) -> None:
        """One row per job, newest first."""
        table = Table("id", "status", "operation", "created", box=None, padding=(0, 2))
        for job in jobs:
            table.add_row(
                job.id,
                status_text(job),
                pb.Operation.Name(job.operation),
                job.created_at.ToJsonString(),
            )
        self._console.print(table)

    @contextlib.contextmanager
    def follow(self, job: pb.Job) -> Iterator[Callable[[pb.WatchJobResponse], None]]:
        """One line that redraws on every update and ticks the elapsed time in between."""
        line = _WatchLine(job)
        with Live(line, console=self._console, refresh_per_second=10) as live:

            def show(update: pb.WatchJobResponse) -> None:
                line.update(update.job)
                live.refresh()

            yield show

    @contextlib.contextmanager
    def follow_many(
        self, job_ids: Sequence[str]
    ) -> Iterator[Callable[[pb.WatchJobsResponse], None]]:
        """A line per job, as `follow` draws it, all redrawn on every update."""
        lines = {job_id: _WatchLine(pb.Job(id=job_id)) for job_id in job_ids}
        with Live(Group(*lines.values()), console=self._console, refresh_per_second=10) as live:

            def show(update: pb.WatchJobsResponse) -> None:
                line = lines.get(update.job.id)
                if line is not None:
                    line.update(update.job)
                    live.refresh()

            yield show

    @contextlib.contextmanager
    def batch(self, *, count: int, watch: bool) -> Iterator[BatchView]:
        """Bars of submitted and finished jobs, then a summary by status."""
        progress = Progress(
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=self._console,
        )
        view = _TerminalBatch(progress, count=count, watch=watch)
        with progress:
            yield view
        self._console.print(view.summary())


class _WatchLine:
    """`⠋ ID  IN_PROGRESS  square_sum  1.2 s`, then `✔ ID  SUCCESS  square_sum  result 13  1.6 s`."""

    def __init__(self, job: pb.Job) -> None:
        self._job = job
        self._started = time.monotonic()
        self._stopped: float | None = None
        self._spinner = Spinner("dots", style="cyan")

    def update(self, job: pb.Job) -> None:
        self._job = job
        if job.status in (pb.SUCCESS, pb.FAILED, pb.CANCELLED):
            self._stopped = time.monotonic()

    def __rich__(self) -> RenderableType:
        job = self._job
        elapsed = (self._stopped or time.monotonic()) - self._started
        icon: RenderableType = self._spinner
        if job.status == pb.SUCCESS:
            icon = Text("✔", style="bold green")
        elif job.status in (pb.FAILED, pb.CANCELLED):
            icon = Text("✘", style="bold red")
        status = status_text(job) if job.status else Text("connecting", style="dim")
        text = Text.assemble(job.id, "  ", status)
        if job.operation:
            text.append(f"  {pb.Operation.Name(job.operation)}")
        if job.HasField("result"):
            text.append_text(Text.assemble("  ", outcome_text(job)))
        text.append(f"  {elapsed:.1f} s", style="dim")
        line = Table.grid(padding=(0, 1))
        line.add_row(icon, text)
        return line


class _TerminalBatch:
    def __init__(self, progress: Progress, *, count: int, watch: bool) -> None:
        self._progress = progress
        self._watch = watch
        self._submitted = progress.add_task("submitted", total=count, note="")
        self._finished = progress.add_task("finished", total=count, note="") if watch else None
        self._ids: list[str] = []
        self._statuses: Counter[str] = Counter()

    def submitted(self, job: pb.Job) -> None:
        self._ids.append(job.id)
        self._progress.advance(self._submitted)

    def finished(self, job: pb.Job) -> None:
        self._statuses[pb.JobStatus.Name(job.status)] += 1
        if self._finished is not None:
            unsuccessful = sum(n for name, n in self._statuses.items() if name != "SUCCESS")
            note = f"[red]{unsuccessful} not successful[/]" if unsuccessful else ""
            self._progress.update(self._finished, advance=1, note=note)

    def summary(self) -> RenderableType:
        if not self._watch:
            return Text("\n".join(self._ids))
        counts = ", ".join(f"{n} {name}" for name, n in sorted(self._statuses.items()))
        return Text(f"{len(self._ids)} jobs: {counts}")


def _key_state(api_key: pb.ApiKey, *, now: float) -> Text:
    """`active`, or `revoked` / `expired` in red."""
    if api_key.HasField("revoked_at"):
        return Text("revoked", style="red")
    if api_key.HasField("expires_at") and api_key.expires_at.seconds <= now:
        return Text("expired", style="red")
    return Text("active", style="green")


def report_error(error: grpc.aio.AioRpcError, *, target: str, api_key_given: bool = True) -> None:
    """Print the server's message, its error reason and every field violation to stderr."""
    code = error.code()
    message = error.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"cannot reach the job service at {target}: {message}"
    elif code == grpc.StatusCode.UNAUTHENTICATED and not api_key_given:
        message = f"{message} (set JOBS_API_KEY or pass --api-key)"
    reasons = [code.name]
    violations: list[str] = []
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reasons.append(info.reason)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [f"{v.field}: {v.description}" for v in bad_request.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            violations += [f"{v.subject}: {v.description}" for v in failure.violations]
    print(f"jobs: {message} [{' '.join(reasons)}]", file=sys.stderr)
    for violation in violations:
        print(f"  - {violation}", file=sys.stderr)
