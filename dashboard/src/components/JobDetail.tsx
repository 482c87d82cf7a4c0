import { useEffect, useRef } from "preact/hooks";
import { cancelOpenJob, openJob } from "../detail";
import { formatNumber, isFinal, isoTime, operationName, shortTime } from "../format";
import { StatusBadge } from "./StatusBadge";

const STREAM_STATES = {
  starting: "Reading the job…",
  watching: "Live: following every change (WatchJob).",
  reconnecting: "Connection lost; resuming after the last change seen…",
  ended: "Final state reached; the history is complete.",
  failed: "",
} as const;

/** The open job: fields, outcome, its whole history, and Cancel while it is unfinished. */
export function JobDetail({ onClose }: { onClose: () => void }) {
  const open = openJob.value;
  const heading = useRef<HTMLHeadingElement>(null);
  const id = open?.id;
  // Opened from the table (a row's link) or by URL: move focus here; after a submit, focus
  // stays in the form so that the next job can be typed at once.
  useEffect(() => {
    const active = document.activeElement;
    if (active === null || active === document.body || active.closest(".jobs") !== null) {
      heading.current?.focus();
    }
  }, [id]);
  if (open === null) {
    return null;
  }
  const { job } = open;
  return (
    <aside
      class="detail card"
      aria-labelledby="detail-title"
      data-job-id={open.id}
      onKeyDown={(event) => {
        if (event.key === "Escape") {
          onClose();
        }
      }}
    >
      <div class="section-head">
        <h2 id="detail-title" tabIndex={-1} ref={heading}>
          Job <span class="id">{open.id}</span>
        </h2>
        <button type="button" class="secondary" onClick={onClose} aria-label="Close job details">
          Close
        </button>
      </div>
      {open.error && (
        <p class="error" role="status">
          {open.error}
        </p>
      )}
      {job !== null && (
        <>
          <dl class="fields">
            <dt>Status</dt>
            <dd data-detail-status>
              <StatusBadge status={job.status} />
            </dd>
            <dt>Operation</dt>
            <dd>{operationName(job.operation)}</dd>
            <dt>Created</dt>
            <dd title={isoTime(job.createdAt)}>{shortTime(job.createdAt)}</dd>
            <dt>Updated</dt>
            <dd title={isoTime(job.updatedAt)}>{shortTime(job.updatedAt)}</dd>
            <dt>Attempts</dt>
            <dd>{job.attempts}</dd>
            {job.result?.result !== undefined && (
              <>
                <dt>Result</dt>
                <dd class="result" data-result>
                  {formatNumber(job.result.result)}
                </dd>
              </>
            )}
            {job.result?.error !== undefined && (
              <>
                <dt>Error</dt>
                <dd class="error-text" data-job-error>
                  {job.result.error}
                </dd>
              </>
            )}
          </dl>
          {!isFinal(job) && (
            <div class="actions">
              <button
                type="button"
                class="danger"
                disabled={open.cancelling}
                onClick={() => void cancelOpenJob()}
              >
                {open.cancelling ? "Cancelling…" : "Cancel job"}
              </button>
            </div>
          )}
          {open.cancelError && (
            <p class="error" role="alert">
              {open.cancelError}
            </p>
          )}
        </>
      )}
      <h3 id="history-title">History</h3>
      <p class="note" role="status">
        {STREAM_STATES[open.stream]}
      </p>
      <div class="table-scroll">
        <table class="history" aria-labelledby="history-title">
          <thead>
            <tr>
              <th scope="col" class="number">
                Seq.
              </th>
              <th scope="col">Status</th>
              <th scope="col">Time</th>
              <th scope="col" class="number">
                Attempt
              </th>
            </tr>
          </thead>
          <tbody>
            {open.history.map((entry) => (
              <tr key={entry.sequence} data-sequence={entry.sequence}>
                <td class="number">{entry.sequence}</td>
                <td>
                  <StatusBadge status={entry.status} />
                </td>
                <td title={isoTime(entry.at)}>{shortTime(entry.at)}</td>
                <td class="number">{entry.attempts}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </aside>
  );
}
