// Small formatting helpers shared by the pages.

/** `1.5 MiB`-style byte counts. */
export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** A duration in seconds as `1h 02m`, `3m 05s` or `12s`. */
export function duration(secs: number | null | undefined): string {
  if (secs === null || secs === undefined || !Number.isFinite(secs) || secs < 0) return '–';
  const s = Math.round(secs);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(rest).padStart(2, '0')}s`;
  return `${rest}s`;
}

/** A timestamp in the reader's locale, short. */
export function when(iso: string | null | undefined): string {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, {
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  });
}

/** A fraction as a percentage with one decimal. */
export function percent(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  return `${(x * 100).toFixed(1)}%`;
}

/** A number with up to 4 significant digits. */
export function num(x: unknown): string {
  if (typeof x !== 'number' || !Number.isFinite(x)) return x === null ? 'null' : String(x ?? '–');
  if (Number.isInteger(x)) return String(x);
  return Number(x.toPrecision(4)).toString();
}

/** The first 8 characters of a UUID, enough to tell runs apart on screen. */
export function shortId(id: string | null | undefined): string {
  return id ? id.slice(0, 8) : '–';
}

/**
 * The top-1 accuracy among a run's metrics: the student's (or the fine-tuned student's) first,
 * as those are what a run is judged by.
 */
export function accuracy(metrics: Record<string, number> | null | undefined): number | null {
  if (!metrics) return null;
  const preferred = [
    'eval/finetuned/top1',
    'eval/student/top1',
    'finetuned/top1',
    'student/top1',
    'eval/ema/top1',
    'eval/teacher/top1',
    'teacher/top1',
  ];
  for (const key of preferred) {
    if (typeof metrics[key] === 'number') return metrics[key];
  }
  const any = Object.keys(metrics).find((k) => k.endsWith('top1'));
  return any ? metrics[any] : null;
}

/** Flattens nested objects into dotted keys: `{a: {b: 1}}` -> `{'a.b': 1}`. */
export function flatten(value: unknown, prefix = '', out: Record<string, unknown> = {}) {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 0 && prefix) out[prefix] = {};
    for (const [k, v] of entries) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out[prefix] = value;
  }
  return out;
}

/** The dataset id a run trains on (its labeled source). */
export function labeledDataset(spec: Record<string, unknown>): string | null {
  const data = spec.data as Record<string, unknown> | undefined;
  const labeled = data?.labeled as Record<string, unknown> | undefined;
  const id = labeled?.dataset_id;
  return typeof id === 'string' ? id : null;
}
