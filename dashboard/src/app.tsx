import { useEffect } from "preact/hooks";
import { access, describeError, handleCallError, jobs, requireKey, storedKey, storeKey } from "./api";
import { closeJob, openJob, showJob } from "./detail";
import { JobDetail } from "./components/JobDetail";
import { JobsTable } from "./components/JobsTable";
import { KeyPrompt } from "./components/KeyPrompt";
import { Overview } from "./components/Overview";
import { SubmitForm } from "./components/SubmitForm";
import { signal } from "@preact/signals";

const JOB_HASH = /^#\/jobs\/([0-9a-fA-F-]{1,64})$/;
/** Why the first call failed (other than the key), while the page retries it. */
const connectError = signal("");
const RETRY_MS = 2000;

/** Whether the service answers with the stored key (or with none, where it needs none). */
async function checkAccess(): Promise<void> {
  access.value = "checking";
  try {
    await jobs.listJobs({ pageSize: 1 });
    connectError.value = "";
    access.value = "ready";
  } catch (error) {
    if (handleCallError(error) === "failed") {
      connectError.value = describeError(error);
      setTimeout(() => void checkAccess(), RETRY_MS);
    }
  }
}

/** The job named by the URL (#/jobs/<id>), so a job's page can be linked and Back closes it. */
function followHash(): void {
  const match = JOB_HASH.exec(window.location.hash);
  if (match?.[1]) {
    showJob(match[1]);
  } else if (openJob.peek() !== null) {
    closeJob();
  }
}

function closeDetail(): void {
  if (JOB_HASH.test(window.location.hash)) {
    history.pushState(null, "", window.location.pathname + window.location.search);
  }
  closeJob();
}

export function App() {
  useEffect(() => {
    void checkAccess();
    window.addEventListener("hashchange", followHash);
    followHash();
    return () => window.removeEventListener("hashchange", followHash);
  }, []);

  if (access.value === "needed") {
    return (
      <KeyPrompt
        onKey={(key) => {
          storeKey(key);
          void checkAccess();
        }}
      />
    );
  }
  if (access.value === "checking") {
    return (
      <main class="key-prompt">
        <p role="status">{connectError.value ? `Cannot reach the service: ${connectError.value}` : "Connecting…"}</p>
      </main>
    );
  }
  return (
    <>
      <header class="top">
        <h1>Jobs dashboard</h1>
        <nav aria-label="Elsewhere">
          <a href="/docs">API docs</a>
          {storedKey() && (
            <button type="button" class="secondary" onClick={() => requireKey("")}>
              Forget key
            </button>
          )}
        </nav>
      </header>
      <main class={openJob.value ? "layout with-detail" : "layout"}>
        <div class="primary">
          <Overview />
          <SubmitForm onSubmitted={(id) => (window.location.hash = `#/jobs/${id}`)} />
          <JobsTable />
        </div>
        {openJob.value && <JobDetail onClose={closeDetail} />}
      </main>
    </>
  );
}
