/**
 * The table's filter as the person sets it, and as ListJobs' filter grammar spells it:
 * conditions joined by AND, each `field operator "value"` (see ListJobsRequest.filter).
 */
import type { JobStatus, Operation } from "./gen/jobs/v1/jobs_service_pb";
import { operationName, statusName } from "./format";

export interface JobFilter {
  readonly status: JobStatus | null;
  readonly operation: Operation | null;
  /** Times as `<input type="datetime-local">` gives them (local time), or "". */
  readonly createdFrom: string;
  readonly createdBefore: string;
}

export const NO_FILTER: JobFilter = {
  status: null,
  operation: null,
  createdFrom: "",
  createdBefore: "",
};

/** An RFC 3339 UTC time for a local `datetime-local` value; null when it is not a time. */
export function localToRfc3339(value: string): string | null {
  if (!value) {
    return null;
  }
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date.toISOString();
}

/** The ListJobs filter expression; "" for every job. */
export function filterExpression(filter: JobFilter): string {
  const conditions: string[] = [];
  if (filter.status !== null) {
    conditions.push(`status = "${statusName(filter.status)}"`);
  }
  if (filter.operation !== null) {
    conditions.push(`operation = "${operationName(filter.operation)}"`);
  }
  const from = localToRfc3339(filter.createdFrom);
  if (from !== null) {
    conditions.push(`create_time >= "${from}"`);
  }
  const before = localToRfc3339(filter.createdBefore);
  if (before !== null) {
    conditions.push(`create_time < "${before}"`);
  }
  return conditions.join(" AND ");
}
