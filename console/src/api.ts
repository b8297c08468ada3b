// The typed client of the platform's public REST API (`/v1`). Every request carries the
// bearer token kept in localStorage; a 401 clears it and sends the user to the sign-in page.
// Errors arrive as RFC 9457 problem+json and are surfaced as `ApiError`.

import type {
  Attempt,
  Checkpoint,
  Dataset,
  Experiment,
  LogLine,
  MetricSeries,
  QueueEntry,
  Run,
  RunPage,
  Sample,
  Worker,
} from './types';
import { type StreamEvent, readStream } from './sse';

export type { StreamEvent };

const TOKEN_KEY = 'mpl.token';

/** The API token of the signed-in user, or null. */
export function getToken(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

/** Stores (or, with null, forgets) the API token. */
export function setToken(token: string | null): void {
  if (token === null) localStorage.removeItem(TOKEN_KEY);
  else localStorage.setItem(TOKEN_KEY, token);
}

/** One invalid field of a 422 answer. */
export interface FieldError {
  field: string;
  message: string;
}

/** A failed request: HTTP status plus the problem document's title, detail and field errors. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly errors: FieldError[] = [],
  ) {
    super(detail ? `${title}: ${detail}` : title);
  }
}

/** Called on 401: forget the token and show the sign-in page. */
function signedOut(): void {
  setToken(null);
  if (!location.hash.startsWith('#/signin')) {
    const back = encodeURIComponent(location.hash.slice(1) || '/runs');
    location.hash = `#/signin?next=${back}`;
  }
}

function authHeaders(extra: Record<string, string> = {}): Record<string, string> {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** Turns a non-2xx response into an ApiError, reading problem+json when present. */
async function failure(res: Response): Promise<ApiError> {
  if (res.status === 401) signedOut();
  let body: Record<string, unknown> = {};
  try {
    body = (await res.json()) as Record<string, unknown>;
  } catch {
    // Not JSON (a proxy error page, for instance): the status text is all we have.
  }
  const title = typeof body.title === 'string' ? body.title : res.statusText || 'Request failed';
  const detail = typeof body.detail === 'string' ? body.detail : `HTTP ${res.status}`;
  const errors = Array.isArray(body.errors) ? (body.errors as FieldError[]) : [];
  return new ApiError(res.status, title, detail, errors);
}

/** Sends a request and returns the raw response, throwing ApiError for non-2xx answers. */
export async function send(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  const init: RequestInit = { method, headers: authHeaders(headers) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)['Content-Type'] = 'application/json';
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  return res;
}

/** A JSON request; returns the parsed body (undefined for 204). */
export async function request<T>(
  method: string,
  path: string,
  body?: unknown,
  headers?: Record<string, string>,
): Promise<T> {
  const res = await send(method, path, body, headers);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

/** GET shorthand. */
export const get = <T>(path: string) => request<T>('GET', path);

/** Builds a query string from the defined, non-empty values. */
export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** The resource calls the console makes, one per route. */
export const api = {
  runs: (filters: Record<string, string | number | undefined>) =>
    get<RunPage>(`/v1/runs${query(filters)}`),
  run: (id: string) => get<Run>(`/v1/runs/${id}`),
  createRun: (body: unknown, idempotencyKey: string) =>
    request<Run>('POST', '/v1/runs', body, { 'Idempotency-Key': idempotencyKey }),
  cancelRun: (id: string) => request<Run>('POST', `/v1/runs/${id}/cancel`),
  retryRun: (id: string) => request<Run>('POST', `/v1/runs/${id}/retry`),
  metricNames: (id: string) => get<{ names: string[] }>(`/v1/runs/${id}/metrics`),
  metrics: (id: string, names: string[], points: number) =>
    get<{ series: MetricSeries[] }>(
      `/v1/runs/${id}/metrics${query({ names: names.join(','), points })}`,
    ),
  attempts: (id: string) => get<Attempt[]>(`/v1/runs/${id}/attempts`),
  logs: (id: string, after?: number) =>
    get<{ lines: LogLine[] }>(`/v1/runs/${id}/logs${query({ after, limit: 500 })}`),
  checkpoints: (id: string) => get<Checkpoint[]>(`/v1/runs/${id}/checkpoints`),
  experiments: () => get<Experiment[] | { items: Experiment[] }>('/v1/experiments'),
  createExperiment: (name: string) => request<Experiment>('POST', '/v1/experiments', { name }),
  datasets: () => get<Dataset[] | { items: Dataset[] }>('/v1/datasets'),
  dataset: (id: string) => get<Dataset>(`/v1/datasets/${id}`),
  createDataset: (body: { name: string; kind: string; format: string }) =>
    request<Dataset>('POST', '/v1/datasets', body),
  deleteDataset: (id: string) => request<void>('DELETE', `/v1/datasets/${id}`),
  ingestDataset: (id: string) => request<Dataset>('POST', `/v1/datasets/${id}/ingest`),
  samples: (id: string, count: number) =>
    get<Sample[]>(`/v1/datasets/${id}/samples${query({ count })}`),
  workers: () => get<Worker[]>('/v1/workers'),
  queue: () => get<QueueEntry[] | { items: QueueEntry[] }>('/v1/queue'),
};

/** Lists may come bare or wrapped in `{items}`; both read the same here. */
export function items<T>(value: T[] | { items: T[] }): T[] {
  return Array.isArray(value) ? value : value.items;
}

/** Fetches a protected file as a Blob (a plain link cannot carry the bearer token). */
export async function fetchBlob(path: string): Promise<Blob> {
  const res = await send('GET', path);
  return res.blob();
}

/** Downloads a protected file: fetch with the token, then save the Blob under `filename`. */
export async function downloadFile(path: string, filename: string): Promise<void> {
  const blob = await fetchBlob(path);
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Uploads one dataset part with XMLHttpRequest, whose upload events report progress
 * (fetch cannot). Resolves with the dataset as the api returns it.
 */
export function uploadPart(
  datasetId: string,
  part: string,
  file: File,
  onProgress: (fraction: number) => void,
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PUT', `/v1/datasets/${datasetId}/parts/${part}`);
    const token = getToken();
    if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve(xhr.responseText ? safeJson(xhr.responseText) : undefined);
        return;
      }
      if (xhr.status === 401) signedOut();
      const body = safeJson(xhr.responseText) as Record<string, unknown> | undefined;
      const title = typeof body?.title === 'string' ? body.title : 'Upload failed';
      const detail = typeof body?.detail === 'string' ? body.detail : `HTTP ${xhr.status}`;
      reject(new ApiError(xhr.status, title, detail));
    };
    xhr.onerror = () => reject(new ApiError(0, 'Upload failed', 'network error'));
    xhr.send(file);
  });
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * Follows a run's SSE stream. EventSource cannot send an Authorization header, so the
 * stream is read with fetch and parsed here. On a dropped connection it reconnects with
 * `Last-Event-ID`, so no event is lost or repeated; it stops for good when the stream ends and
 * `isOver` says the run is finished. Returns a function that stops it.
 */
export function followEvents(
  runId: string,
  onEvent: (e: StreamEvent) => void,
  isOver: () => Promise<boolean>,
): () => void {
  const controller = new AbortController();
  let lastId: number | null = null;
  let stopped = false;

  const connect = async () => {
    while (!stopped) {
      try {
        const headers = authHeaders({ Accept: 'text/event-stream' });
        if (lastId !== null) headers['Last-Event-ID'] = String(lastId);
        const res = await fetch(`/v1/runs/${runId}/events`, {
          headers,
          signal: controller.signal,
        });
        if (!res.ok || !res.body) {
          if (res.status === 401) signedOut();
          if (res.status === 404 || res.status === 401) return;
        } else {
          await readStream(res.body, (e) => {
            if (e.id !== null) lastId = e.id;
            onEvent(e);
          });
          // The server ends a stream once the run is over and every event was sent.
          if (await isOver().catch(() => false)) return;
        }
      } catch {
        if (stopped) return;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  void connect();
  return () => {
    stopped = true;
    controller.abort();
  };
}
