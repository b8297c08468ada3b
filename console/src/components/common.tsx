// Small building blocks shared by the pages: status badges, progress bars, error boxes, a
// polling hook and a per-class bar chart.

import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from '../api';
import { duration, percent } from '../format';

/** A coloured run or dataset status. */
export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge status-${status}`}>{status}</span>;
}

/** A progress bar with the fraction and (when known) the time left. */
export function ProgressBar(props: { fraction: number; eta?: number | null; label: string }) {
  const fraction = Math.min(1, Math.max(0, props.fraction || 0));
  return (
    <div class="progress-cell">
      <div
        class="progress"
        role="progressbar"
        aria-label={props.label}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.round(fraction * 100)}
      >
        <div class="progress-fill" style={{ width: `${fraction * 100}%` }} />
      </div>
      <span class="progress-text">
        {percent(fraction)}
        {props.eta !== undefined && props.eta !== null && fraction < 1
          ? ` · ETA ${duration(props.eta)}`
          : ''}
      </span>
    </div>
  );
}

/** Shows an error, with field errors listed when the API named any. */
export function ErrorBox({ error }: { error: unknown }) {
  if (!error) return null;
  const message = error instanceof Error ? error.message : String(error);
  const fields = error instanceof ApiError ? error.errors : [];
  return (
    <div class="error-box" role="alert">
      <strong>{message}</strong>
      {fields.length > 0 && (
        <ul>
          {fields.map((f) => (
            <li key={f.field}>
              <code>{f.field || '(document)'}</code>: {f.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

/** A page section with a heading. */
export function Section(props: {
  title: string;
  children: ComponentChildren;
  actions?: ComponentChildren;
}) {
  const id = `section-${props.title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return (
    <section class="card" aria-labelledby={id}>
      <header class="card-header">
        <h2 id={id}>{props.title}</h2>
        {props.actions && <div class="actions">{props.actions}</div>}
      </header>
      {props.children}
    </section>
  );
}

/**
 * Loads data now and again every `intervalMs` (0: once). Returns the latest value, the last
 * error and a function that reloads at once.
 */
export function usePoll<T>(load: () => Promise<T>, intervalMs: number, deps: unknown[]) {
  const [data, setData] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const loadRef = useRef(load);
  loadRef.current = load;

  const reload = useCallback(async () => {
    try {
      setData(await loadRef.current());
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, []);

  useEffect(() => {
    setData(null);
    void reload();
    if (intervalMs <= 0) return;
    const timer = setInterval(() => {
      if (document.visibilityState !== 'hidden') void reload();
    }, intervalMs);
    return () => clearInterval(timer);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);

  return { data, error, reload };
}

/** Horizontal bars, one per class, with the count written beside each. */
export function ClassBars(props: { counts: number[]; names?: string[] }) {
  const max = Math.max(1, ...props.counts);
  return (
    <table class="class-bars" aria-label="Images per class">
      <thead>
        <tr>
          <th scope="col">Class</th>
          <th scope="col">Images</th>
        </tr>
      </thead>
      <tbody>
        {props.counts.map((count, i) => (
          <tr key={i}>
            <th scope="row">{props.names?.[i] ?? i}</th>
            <td>
              <div class="bar-row">
                <div class="bar" style={{ width: `${(count / max) * 100}%` }} />
                <span>{count}</span>
              </div>
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
