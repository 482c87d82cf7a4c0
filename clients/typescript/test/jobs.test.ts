/**
 * The generated client against the running service through Envoy (native
 * gRPC over HTTP/2 cleartext): submit, watch to SUCCESS, read error details.
 *
 * JOBS_GATEWAY_TARGET names Envoy's "host:port" and JOBS_API_KEY the key every call
 * presents (as `make run` prints it); tests/e2e/test_typescript_client.py sets both
 * to the pytest session's stack. With JOBS_CA_FILE (a PEM CA) the client talks TLS
 * to it (tests/e2e/test_tls.py).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  JobStatus,
  Operation,
  type WatchJobResponse,
  connectJobService,
} from "../src/index.js";

const target = process.env.JOBS_GATEWAY_TARGET;
if (!target) {
  throw new Error("set JOBS_GATEWAY_TARGET to Envoy's host:port, for example 127.0.0.1:8000");
}
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
// A well-formed UUIDv7 that the service never issued.
const UNKNOWN_ID = "019a0000-0000-7000-8000-000000000000";
// The states a successful job passes through; sequence N is the Nth of them.
const LIFE = [JobStatus.PENDING, JobStatus.IN_PROGRESS, JobStatus.SUCCESS];

// Empty only against a service running with AUTH_MODE=none.
const apiKey = process.env.JOBS_API_KEY ?? "";
const caFile = process.env.JOBS_CA_FILE;
const connection = connectJobService(target, {
  apiKey,
  ...(caFile ? { ca: readFileSync(caFile) } : {}),
});
const jobs = connection.client;
after(() => connection.close());

/** The ConnectError a call fails with; fails the test if it succeeds or throws anything else. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    assert.ok(error instanceof ConnectError, `expected a ConnectError, got ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}

describe("JobService through Envoy", { timeout: 60_000 }, () => {
  it("submits a job and watches it to SUCCESS", async () => {
    const submitted = await jobs.submitJob({ data: [1, 2, 3, 4, 5], operation: Operation.square_sum });
    assert.match(submitted.id, UUID);
    assert.equal(submitted.status, JobStatus.PENDING);
    assert.equal(submitted.operation, Operation.square_sum);

    const updates: WatchJobResponse[] = [];
    for await (const update of jobs.watchJob({ jobId: submitted.id })) {
      updates.push(update);
    }

    // The stream starts with the current state (PENDING or already IN_PROGRESS),
    // then sends every change once, in order, and ends after SUCCESS.
    // Heartbeats repeat the latest state and sequence.
    const changes = updates.filter((update) => !update.heartbeat);
    const sequences = changes.map((update) => update.sequence);
    const first = sequences[0] ?? 0;
    assert.ok(first === 1 || first === 2, `the first sequence is ${first}`);
    assert.deepEqual(sequences, LIFE.slice(first - 1).map((_, index) => first + index));
    assert.deepEqual(
      changes.map((update) => update.job?.status),
      LIFE.slice(first - 1),
    );
    let latest = 0;
    for (const update of updates) {
      assert.equal(update.job?.id, submitted.id);
      if (update.heartbeat) {
        assert.equal(update.sequence, latest, "a heartbeat repeats the latest sequence");
      } else {
        latest = update.sequence;
      }
    }
    const last = updates.at(-1);
    assert.equal(last?.heartbeat, false);
    assert.equal(last?.sequence, 3);
    assert.equal(last?.job?.status, JobStatus.SUCCESS);
    assert.equal(last?.job?.result?.result, 55);
    assert.equal(last?.job?.result?.error, undefined);
    assert.equal(last?.job?.attempts, 1);

    // Resuming after sequence 2 sends exactly the final change.
    const resumed: WatchJobResponse[] = [];
    for await (const update of jobs.watchJob({ jobId: submitted.id, afterSequence: 2 })) {
      resumed.push(update);
    }
    assert.deepEqual(
      resumed.map((update) => [update.sequence, update.job?.status]),
      [[3, JobStatus.SUCCESS]],
    );

    const finished = await jobs.getResult({ jobId: submitted.id });
    assert.equal(finished.status, JobStatus.SUCCESS);
    assert.equal(finished.result?.result, 55);
  });

  it("reads BadRequest and ErrorInfo details of an invalid SubmitJob", async () => {
    const error = await failure(jobs.submitJob({ data: [], operation: Operation.cube_sum }));

    assert.equal(error.code, Code.InvalidArgument, error.message);
    const [badRequest] = error.findDetails(BadRequestSchema);
    assert.ok(badRequest, `no google.rpc.BadRequest in ${JSON.stringify(error.details)}`);
    assert.deepEqual(
      badRequest.fieldViolations.map((violation) => violation.field),
      ["data"],
    );
    assert.notEqual(badRequest.fieldViolations[0]?.description, "");
    const [info] = error.findDetails(ErrorInfoSchema);
    assert.equal(info?.reason, "INVALID_REQUEST");
    assert.equal(info?.domain, "jobs.v1");
  });

  it("names every offending field, a list element by its index", async () => {
    const error = await failure(
      jobs.submitJob({ data: [1, Number.NaN], operation: Operation.OPERATION_UNSPECIFIED }),
    );

    assert.equal(error.code, Code.InvalidArgument, error.message);
    const fields = error
      .findDetails(BadRequestSchema)
      .flatMap((badRequest) => badRequest.fieldViolations.map((violation) => violation.field));
    assert.deepEqual(fields.sort(), ["data[1]", "operation"]);
  });

  it("submits a batch, answered in request order, and each job runs to SUCCESS", async () => {
    const requestId = `ts-batch-${Date.now()}-${Math.random()}`;
    const requests = [
      { data: [1, 2], operation: Operation.square_sum, requestId: `${requestId}-1` },
      { data: [1, 2], operation: Operation.cube_sum, requestId: `${requestId}-2` },
      { data: [3], operation: Operation.square_sum, requestId: `${requestId}-3` },
    ];

    const { jobs: submitted } = await jobs.batchSubmitJobs({ requests });
    const again = await jobs.batchSubmitJobs({ requests });

    assert.deepEqual(
      submitted.map((job) => job.operation),
      requests.map((request) => request.operation),
    );
    for (const job of submitted) {
      assert.match(job.id, UUID);
      assert.equal(job.status, JobStatus.PENDING);
    }
    // Each request has its own key: the same batch again is the same jobs.
    assert.deepEqual(
      again.jobs.map((job) => job.id),
      submitted.map((job) => job.id),
    );
    const results: (number | undefined)[] = [];
    for (const job of submitted) {
      let final = job;
      for await (const update of jobs.watchJob({ jobId: job.id })) {
        final = update.job ?? final;
      }
      assert.equal(final.status, JobStatus.SUCCESS);
      results.push(final.result?.result);
    }
    assert.deepEqual(results, [5, 9, 9]);
  });

  it("refuses a batch with one invalid request as a whole, naming its field", async () => {
    const error = await failure(
      jobs.batchSubmitJobs({
        requests: [
          { data: [1], operation: Operation.square_sum },
          { data: [Number.POSITIVE_INFINITY], operation: Operation.square_sum },
        ],
      }),
    );

    assert.equal(error.code, Code.InvalidArgument, error.message);
    const fields = error
      .findDetails(BadRequestSchema)
      .flatMap((badRequest) => badRequest.fieldViolations.map((violation) => violation.field));
    assert.deepEqual(fields, ["requests[1].data[0]"]);
  });

  it("answers NOT_FOUND with ErrorInfo for an unknown job", async () => {
    const error = await failure(jobs.getStatus({ jobId: UNKNOWN_ID }));

    assert.equal(error.code, Code.NotFound, error.message);
    const [info] = error.findDetails(ErrorInfoSchema);
    assert.equal(info?.reason, "JOB_NOT_FOUND");
    assert.equal(info?.domain, "jobs.v1");
  });
});
