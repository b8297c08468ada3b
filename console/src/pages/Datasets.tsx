// Datasets: the list, and a form that creates a dataset and uploads its parts with a progress
// bar (IDX: images and, when labeled, labels; other formats: one archive).

import { useState } from 'preact/hooks';
import { api, items, uploadPart } from '../api';
import { ErrorBox, ProgressBar, Section, StatusBadge, usePoll } from '../components/common';
import { bytes, shortId, when } from '../format';
import { navigate } from '../router';

const FORMATS = [
  { value: 'idx', label: 'IDX (MNIST family, gzip or raw)' },
  { value: 'cifar10', label: 'CIFAR-10 binary (tar, tar.gz or .bin)' },
  { value: 'cifar100', label: 'CIFAR-100 binary' },
  { value: 'image_folder', label: 'Image folders (tar, tar.gz or zip)' },
];

/** The parts a dataset of this format and kind needs. */
export function requiredParts(format: string, kind: string): string[] {
  if (format === 'idx') return kind === 'labeled' ? ['images', 'labels'] : ['images'];
  return ['archive'];
}

const PART_HELP: Record<string, string> = {
  images: 'IDX images file (…-images-idx3-ubyte[.gz])',
  labels: 'IDX labels file (…-labels-idx1-ubyte[.gz])',
  archive: 'Archive file',
};

/** The datasets page. */
export function DatasetsPage() {
  const list = usePoll(async () => items(await api.datasets()), 4000, []);
  return (
    <div class="page">
      <div class="page-header">
        <h1>Datasets</h1>
      </div>
      <ErrorBox error={list.error} />
      <Section title="All datasets">
        <div class="table-wrap">
          <table class="datasets-table">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col">Kind</th>
                <th scope="col">Format</th>
                <th scope="col">Images</th>
                <th scope="col">Uploaded</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {(list.data ?? []).map((d) => (
                <tr key={d.id} data-dataset-id={d.id} data-status={d.status}>
                  <td>
                    <a href={`#/datasets/${d.id}`}>{d.name}</a>
                    <div class="muted small mono">{shortId(d.id)}</div>
                  </td>
                  <td>
                    <StatusBadge status={d.status} />
                    {d.status === 'failed' && d.failure_reason && (
                      <div class="field-error small">{d.failure_reason}</div>
                    )}
                  </td>
                  <td>{d.kind}</td>
                  <td>{d.format}</td>
                  <td class="num">{imageCount(d.stats) ?? '–'}</td>
                  <td class="num">
                    {bytes((d.parts ?? []).reduce((n, p) => n + (p.size_bytes ?? 0), 0))}
                  </td>
                  <td>{when(d.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {list.data && list.data.length === 0 && <p class="empty">No datasets yet.</p>}
        </div>
      </Section>
      <UploadForm onDone={() => void list.reload()} />
    </div>
  );
}

/** The number of images in a dataset's statistics, whatever the field is called. */
export function imageCount(stats: Record<string, unknown> | null): number | null {
  if (!stats) return null;
  for (const key of ['count', 'num_images', 'images', 'len', 'size']) {
    if (typeof stats[key] === 'number') return stats[key] as number;
  }
  return null;
}

function UploadForm({ onDone }: { onDone: () => void }) {
  const [name, setName] = useState('');
  const [kind, setKind] = useState('labeled');
  const [format, setFormat] = useState('idx');
  const [files, setFiles] = useState<Record<string, File | null>>({});
  const [progress, setProgress] = useState<Record<string, number>>({});
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const parts = requiredParts(format, kind);

  const submit = async (e: Event) => {
    e.preventDefault();
    setError(null);
    const missing = parts.filter((p) => !files[p]);
    if (!name.trim()) return setError(new Error('Give the dataset a name.'));
    if (missing.length > 0) return setError(new Error(`Choose a file for: ${missing.join(', ')}.`));
    setBusy(true);
    try {
      const dataset = await api.createDataset({ name: name.trim(), kind, format });
      for (const part of parts) {
        const file = files[part] as File;
        await uploadPart(dataset.id, part, file, (f) =>
          setProgress((old) => ({ ...old, [part]: f })),
        );
      }
      onDone();
      navigate(`/datasets/${dataset.id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Section title="Upload a dataset">
      <form class="form-grid" onSubmit={submit} aria-describedby="upload-help">
        <p id="upload-help" class="muted span-all">
          The files stream to the server; ingestion (validation and conversion) starts by itself
          once every part is there.
        </p>
        <label for="ds-name">Name</label>
        <input
          id="ds-name"
          value={name}
          required
          onInput={(e) => setName((e.target as HTMLInputElement).value)}
        />
        <label for="ds-kind">Kind</label>
        <select
          id="ds-kind"
          value={kind}
          onChange={(e) => setKind((e.target as HTMLSelectElement).value)}
        >
          <option value="labeled">labeled</option>
          <option value="unlabeled">unlabeled</option>
        </select>
        <label for="ds-format">Format</label>
        <select
          id="ds-format"
          value={format}
          onChange={(e) => setFormat((e.target as HTMLSelectElement).value)}
        >
          {FORMATS.map((f) => (
            <option key={f.value} value={f.value}>
              {f.label}
            </option>
          ))}
        </select>
        {parts.map((part) => (
          <>
            <label for={`ds-part-${part}`}>{PART_HELP[part]}</label>
            <div class="stack">
              <input
                id={`ds-part-${part}`}
                name={part}
                type="file"
                onChange={(e) => {
                  const f = (e.target as HTMLInputElement).files?.[0] ?? null;
                  setFiles((old) => ({ ...old, [part]: f }));
                }}
              />
              {progress[part] !== undefined && (
                <ProgressBar fraction={progress[part]} label={`Upload of ${part}`} />
              )}
            </div>
          </>
        ))}
        <div class="span-all">
          <ErrorBox error={error} />
          <button type="submit" disabled={busy}>
            {busy ? 'Uploading…' : 'Create and upload'}
          </button>
        </div>
      </form>
    </Section>
  );
}
