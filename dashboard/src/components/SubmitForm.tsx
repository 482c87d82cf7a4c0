import { useSignal } from "@preact/signals";
import { describeError, fieldViolations, handleCallError, jobs } from "../api";
import { Operation } from "../gen/jobs/v1/jobs_service_pb";
import { operationName, OPERATIONS } from "../format";
import { showSubmitted } from "../live";

interface FormErrors {
  readonly numbers: readonly string[];
  readonly operation: readonly string[];
  readonly form: readonly string[];
}

const NO_ERRORS: FormErrors = { numbers: [], operation: [], form: [] };

/** `data[2]` -> "number 3"; `data` -> "". */
function position(field: string): string {
  const match = /^data\[(\d+)\]$/.exec(field);
  return match ? `number ${Number(match[1]) + 1}: ` : "";
}

/** Which form field each BadRequest violation belongs to. */
function errorsOf(violations: Map<string, string[]>): FormErrors {
  const numbers: string[] = [];
  const operation: string[] = [];
  const form: string[] = [];
  for (const [field, descriptions] of violations) {
    for (const description of descriptions) {
      if (field === "data" || field.startsWith("data[")) {
        numbers.push(`${position(field)}${description}`);
      } else if (field === "operation") {
        operation.push(description);
      } else {
        form.push(`${field}: ${description}`);
      }
    }
  }
  return { numbers, operation, form };
}

/**
 * The numbers as typed, separated by commas, spaces or semicolons. Anything JavaScript reads as
 * a number goes to the service, which decides (1e999 and NaN reach it and it says why not);
 * what is not a number at all is pointed out here.
 */
function parseNumbers(text: string): { data: number[]; errors: string[] } {
  const data: number[] = [];
  const errors: string[] = [];
  text
    .split(/[\s,;]+/)
    .filter((token) => token !== "")
    .forEach((token, index) => {
      const value = Number(token);
      if (Number.isNaN(value) && token !== "NaN") {
        errors.push(`number ${index + 1}: "${token}" is not a number`);
      }
      data.push(value);
    });
  return { data, errors };
}

/** Submits a job; the service's field violations appear next to the field they name. */
export function SubmitForm({ onSubmitted }: { onSubmitted: (id: string) => void }) {
  const operation = useSignal<Operation>(Operation.square_sum);
  const numbers = useSignal("1, 2, 3");
  const errors = useSignal<FormErrors>(NO_ERRORS);
  const busy = useSignal(false);
  const submitted = useSignal("");

  const submit = async (event: Event) => {
    event.preventDefault();
    const parsed = parseNumbers(numbers.value);
    submitted.value = "";
    if (parsed.errors.length > 0) {
      errors.value = { ...NO_ERRORS, numbers: parsed.errors };
      return;
    }
    busy.value = true;
    try {
      const job = await jobs.submitJob({ data: parsed.data, operation: operation.value });
      errors.value = NO_ERRORS;
      submitted.value = job.id;
      showSubmitted(job);
      onSubmitted(job.id);
    } catch (error) {
      if (handleCallError(error) === "failed") {
        const found = errorsOf(fieldViolations(error));
        const any = found.numbers.length + found.operation.length + found.form.length > 0;
        errors.value = any ? found : { ...NO_ERRORS, form: [describeError(error)] };
      } else {
        errors.value = NO_ERRORS;
      }
    } finally {
      busy.value = false;
    }
  };

  const { numbers: numberErrors, operation: operationErrors, form: formErrors } = errors.value;
  return (
    <section class="submit card" aria-labelledby="submit-title">
      <h2 id="submit-title">Submit a job</h2>
      <form onSubmit={submit} noValidate>
        <div class="field">
          <label for="submit-operation">Operation</label>
          <select
            id="submit-operation"
            name="operation"
            value={String(operation.value)}
            aria-invalid={operationErrors.length > 0}
            aria-describedby={operationErrors.length > 0 ? "submit-operation-error" : undefined}
            onChange={(event) => {
              operation.value = Number(event.currentTarget.value) as Operation;
            }}
          >
            {OPERATIONS.map((value) => (
              <option key={value} value={String(value)}>
                {operationName(value)}
              </option>
            ))}
          </select>
          {operationErrors.length > 0 && (
            <p class="field-error" id="submit-operation-error">
              {operationErrors.join("; ")}
            </p>
          )}
        </div>
        <div class="field field-wide">
          <label for="submit-numbers">Numbers</label>
          <input
            id="submit-numbers"
            name="numbers"
            type="text"
            inputMode="decimal"
            autocomplete="off"
            spellcheck={false}
            value={numbers.value}
            aria-invalid={numberErrors.length > 0}
            aria-describedby={
              numberErrors.length > 0 ? "submit-numbers-error submit-numbers-hint" : "submit-numbers-hint"
            }
            onInput={(event) => {
              numbers.value = event.currentTarget.value;
            }}
          />
          <p class="hint" id="submit-numbers-hint">
            Separated by commas or spaces, e.g. <code>1, 2.5, -3</code>.
          </p>
          {numberErrors.length > 0 && (
            <p class="field-error" id="submit-numbers-error" data-field="data">
              {numberErrors.join("; ")}
            </p>
          )}
        </div>
        <div class="actions">
          <button type="submit" disabled={busy.value}>
            {busy.value ? "Submitting…" : "Submit"}
          </button>
        </div>
      </form>
      {formErrors.length > 0 && (
        <p class="error" role="alert">
          {formErrors.join("; ")}
        </p>
      )}
      <p class="note" role="status">
        {submitted.value && (
          <>
            Submitted <a href={`#/jobs/${submitted.value}`}>{submitted.value}</a>.
          </>
        )}
      </p>
    </section>
  );
}
