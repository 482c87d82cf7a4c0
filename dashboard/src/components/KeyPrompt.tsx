import { useSignal } from "@preact/signals";
import { useEffect, useRef } from "preact/hooks";
import { keyPromptReason } from "../api";

/** Asks for the API key that every call presents; it is kept in this tab's sessionStorage only. */
export function KeyPrompt({ onKey }: { onKey: (key: string) => void }) {
  const key = useSignal("");
  const input = useRef<HTMLInputElement>(null);
  // Browsers honour `autofocus` once per document; the prompt may come back later (a refused key).
  useEffect(() => {
    input.current?.focus();
  }, []);
  return (
    <main class="key-prompt">
      <form
        class="card"
        aria-labelledby="key-title"
        onSubmit={(event) => {
          event.preventDefault();
          const value = key.value.trim();
          if (value) {
            onKey(value);
          }
        }}
      >
        <h1 id="key-title">Jobs dashboard</h1>
        <p>
          The service needs an API key. <code>make run</code> prints one as{" "}
          <code>export JOBS_API_KEY=…</code>; <code>jobs keys create</code> makes others.
        </p>
        {keyPromptReason.value && (
          <p class="error" role="alert" id="key-error">
            {keyPromptReason.value}
          </p>
        )}
        <label for="api-key">API key</label>
        <input
          id="api-key"
          name="api-key"
          type="password"
          autocomplete="off"
          spellcheck={false}
          required
          ref={input}
          value={key.value}
          aria-describedby={keyPromptReason.value ? "key-error key-note" : "key-note"}
          onInput={(event) => {
            key.value = event.currentTarget.value;
          }}
        />
        <p class="note" id="key-note">
          Kept in this tab only (sessionStorage) and sent to this gateway as{" "}
          <code>authorization: Bearer …</code>.
        </p>
        <button type="submit">Use this key</button>
      </form>
    </main>
  );
}
