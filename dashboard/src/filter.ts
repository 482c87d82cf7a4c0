/**
 * The table's filter as the person sets it, and as ListJobs' filter grammar spells it:
 * conditions joined by AND, each `field operator "value"` (see ListJobsRequest.filter).
 */
import type { Job, JobStatus, Operation } from "./gen/jobs/v1/jobs_service_pb";
import { ms, operationName, statusName } from "./format";

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

/** Whether `job` is one of the jobs `filter` selects (as the service would decide). */
export function matches(job: Job, filter: JobFilter): boolean {
  if (filter.status !== null && job.status !== filter.status) {
    return false;
  }
  if (filter.operation !== null && job.operation !== filter.operation) {
    return false;
  }
  const created = ms(job.createdAt);
  const from = localToRfc3339(filter.createdFrom);
  if (from !== null && created < Date.parse(from)) {
    return false;
  }
  const before = localToRfc3339(filter.createdBefore);
  return before === null || created < Date.parse(before);
}
