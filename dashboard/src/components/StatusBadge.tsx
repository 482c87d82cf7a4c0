import type { JobStatus } from "../gen/jobs/v1/jobs_service_pb";
import { statusName } from "../format";

/** A status as text with a colour beside it (never colour alone). */
export function StatusBadge({ status }: { status: JobStatus }) {
  const name = statusName(status);
  return (
    <span class={`status status-${name.toLowerCase()}`} data-status={name}>
      {name}
    </span>
  );
}
