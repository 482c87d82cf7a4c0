import { openJob } from "../detail";
import { filterExpression } from "../filter";
import type { Job, JobStatus, Operation } from "../gen/jobs/v1/jobs_service_pb";
import { isoTime, newer, operationName, OPERATIONS, shortTime, statusName, STATUSES } from "../format";
import { liveError, livePage, olderPage } from "../live";
import { streamError, streamState } from "../stream";
import {
  filter,
  pageNumber,
  pageRequest,
  PAGE_SIZES,
  pageSize,
  previousPage,
  setFilter,
  setPageSize,
} from "../view";
import { StatusBadge } from "./StatusBadge";

function Filters() {
  const current = filter.value;
  const expression = filterExpression(current);
  return (
    <form class="filters" aria-label="Filter jobs" onSubmit={(event) => event.preventDefault()}>
      <div class="field">
        <label for="filter-status">Status</label>
        <select
          id="filter-status"
          value={current.status === null ? "" : String(current.status)}
          onChange={(event) => {
            const value = event.currentTarget.value;
            setFilter({ ...current, status: value === "" ? null : (Number(value) as JobStatus) });
          }}
        >
          <option value="">any</option>
          {STATUSES.map((status) => (
            <option key={status} value={String(status)}>
              {statusName(status)}
            </option>
          ))}
        </select>
      </div>
      <div class="field">
        <label for="filter-operation">Operation</label>
        <select
          id="filter-operation"
          value={current.operation === null ? "" : String(current.operation)}
          onChange={(event) => {
            const value = event.currentTarget.value;
            setFilter({
              ...current,
              operation: value === "" ? null : (Number(value) as Operation),
            });
          }}
        >
          <option value="">any</option>
          {OPERATIONS.map((operation) => (
            <option key={operation} value={String(operation)}>
              {operationName(operation)}
            </option>
          ))}
        </select>
      </div>
      <div class="field">
        <label for="filter-from">Created from</label>
        <input
          id="filter-from"
          type="datetime-local"
          step="1"
          value={current.createdFrom}
          onChange={(event) => setFilter({ ...current, createdFrom: event.currentTarget.value })}
        />
      </div>
      <div class="field">
        <label for="filter-before">Created before</label>
        <input
          id="filter-before"
          type="datetime-local"
          step="1"
          value={current.createdBefore}
          onChange={(event) => setFilter({ ...current, createdBefore: event.currentTarget.value })}
        />
      </div>
      <div class="field">
        <label for="filter-page-size">Per page</label>
        <select
          id="filter-page-size"
          value={String(pageSize.value)}
          onChange={(event) => setPageSize(Number(event.currentTarget.value))}
        >
          {PAGE_SIZES.map((size) => (
            <option key={size} value={String(size)}>
              {size}
            </option>
          ))}
        </select>
      </div>
      <p class="filter-expression">
        <span>filter:</span> <code data-filter>{expression || "(none: every job)"}</code>
      </p>
    </form>
  );
}

const LIVE_TEXT = {
  connecting: "Connecting…",
  live: "Live: streaming every change (WatchJobs)",
  reconnecting: "Reconnecting: resuming after the last change seen…",
  paused: "Paused while the tab is hidden",
} as const;

/** Whether the table is live, and when it is not, why. */
function LiveIndicator() {
  const state = streamState.value;
  const why = state === "reconnecting" ? streamError.value : "";
  return (
    <p class="live" role="status" data-live={state} title={why || undefined}>
      {LIVE_TEXT[state]}
    </p>
  );
}

function Row({ job, open }: { job: Job; open: boolean }) {
  return (
    <tr data-job-id={job.id} aria-current={open ? "true" : undefined} class={open ? "open" : ""}>
      <td class="id">
        <a href={`#/jobs/${job.id}`} title={`Open job ${job.id}`}>
          {job.id}
        </a>
      </td>
      <td>
        <StatusBadge status={job.status} />
      </td>
      <td>{operationName(job.operation)}</td>
      <td title={isoTime(job.createdAt)}>{shortTime(job.createdAt)}</td>
      <td class="optional" title={isoTime(job.updatedAt)}>
        {shortTime(job.updatedAt)}
      </td>
      <td class="optional number">{job.attempts}</td>
    </tr>
  );
}

export function JobsTable() {
  const page = livePage.value;
  const request = pageRequest.value;
  const current = page !== null && page.request === request ? page : null;
  const open = openJob.value;
  // The open job's watch may be ahead of the stream: show whichever state is later.
  const rows = (current?.jobs ?? []).map((job) =>
    open?.job && open.id === job.id ? newer(open.job, job) : job,
  );
  const number = pageNumber.value;
  return (
    <section class="jobs card" aria-labelledby="jobs-title">
      <div class="section-head">
        <h2 id="jobs-title">Jobs</h2>
        <LiveIndicator />
      </div>
      <Filters />
      {liveError.value && (
        <p class="error" role="status">
          {liveError.value}
        </p>
      )}
      <div class="table-scroll">
        <table aria-describedby="jobs-caption" aria-busy={current === null}>
          <caption id="jobs-caption">
            Newest first, page {number}
            {current === null ? " (loading…)" : `: ${rows.length} jobs`}
          </caption>
          <thead>
            <tr>
              <th scope="col">ID</th>
              <th scope="col">Status</th>
              <th scope="col">Operation</th>
              <th scope="col">Created</th>
              <th scope="col" class="optional">
                Updated
              </th>
              <th scope="col" class="optional number">
                Attempts
              </th>
            </tr>
          </thead>
          <tbody>
            {rows.map((job) => (
              <Row key={job.id} job={job} open={open?.id === job.id} />
            ))}
            {current !== null && rows.length === 0 && (
              <tr>
                <td colSpan={6} class="empty">
                  No jobs match.
                </td>
              </tr>
            )}
          </tbody>
        </table>
      </div>
      <nav class="pager" aria-label="Pages">
        <button type="button" onClick={previousPage} disabled={number <= 1}>
          ← Newer
        </button>
        <span aria-live="polite">Page {number}</span>
        <button
          type="button"
          onClick={() => void olderPage()}
          disabled={!current?.nextPageToken && !current?.overflowed}
        >
          Older →
        </button>
      </nav>
    </section>
  );
}
