// New run: a form generated from the RunSpec schema in `/openapi.json`, started from a preset,
// with the paper's defaults as placeholders. The API validates the spec; its 422 field errors
// are shown beside the fields they name.

import { useEffect, useMemo, useState } from 'preact/hooks';
import { ApiError, type FieldError, api, items } from '../api';
import { ErrorBox, Section, usePoll } from '../components/common';
import { PAPER_DEFAULTS, presets, withDatasets } from '../presets';
import { navigate } from '../router';
import { type FieldNode, getAt, loadRunSpecSchema, setAt } from '../schema';
import type { Dataset } from '../types';

type Json = Record<string, unknown>;

/** Field errors keyed by dotted path inside the spec (`teacher_optimizer.lr`). */
type ErrorMap = Map<string, string>;

/** The DOM id of a spec field's input. */
export function fieldId(path: string[]): string {
  return `spec-${path.join('-')}`;
}

/** The new-run page. */
export function NewRunPage() {
  const [schema, setSchema] = useState<FieldNode | null>(null);
  const [schemaError, setSchemaError] = useState<unknown>(null);
  const datasets = usePoll(async () => items(await api.datasets()), 0, []);
  const experiments = usePoll(async () => items(await api.experiments()), 0, []);
  const ready = (datasets.data ?? []).filter((d) => d.status === 'ready');
  const allPresets = useMemo(presets, []);

  const [presetId, setPresetId] = useState('smoke');
  const [choice, setChoice] = useState({ labeled: '', eval: '', unlabeled: '' });
  const [spec, setSpec] = useState<Json>(() => allPresets[0].spec);
  const [name, setName] = useState('');
  const [experimentId, setExperimentId] = useState('');
  const [newExperiment, setNewExperiment] = useState('');
  const [priority, setPriority] = useState('0');
  const [maxAttempts, setMaxAttempts] = useState('3');
  const [errors, setErrors] = useState<ErrorMap>(new Map());
  const [submitError, setSubmitError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [jsonText, setJsonText] = useState<string | null>(null);
  const [idempotencyKey, setIdempotencyKey] = useState(() => crypto.randomUUID());

  useEffect(() => {
    loadRunSpecSchema().then(setSchema, setSchemaError);
  }, []);

  // Once the datasets are known, point the spec at the first ready labeled one. Only the data
  // sources change: whatever was typed into the form while the list loaded is kept.
  useEffect(() => {
    if (choice.labeled || ready.length === 0) return;
    const labeled = ready.find((d) => d.kind === 'labeled') ?? ready[0];
    const next = { ...choice, labeled: labeled.id, eval: labeled.id };
    setChoice(next);
    setSpec((old) => withDatasets(old, next));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [ready.length]);

  function applyPreset(id: string, datasetChoice = choice) {
    const preset = allPresets.find((p) => p.id === id) ?? allPresets[0];
    setPresetId(preset.id);
    setSpec(withDatasets(preset.spec, datasetChoice));
    setErrors(new Map());
    setJsonText(null);
  }

  const change = (path: string[], value: unknown) => {
    setSpec((old) => setAt(old, path, value));
    setIdempotencyKey(crypto.randomUUID());
    const key = path.join('.');
    if (errors.has(key)) {
      const next = new Map(errors);
      next.delete(key);
      setErrors(next);
    }
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    setSubmitError(null);
    setErrors(new Map());
    setBusy(true);
    try {
      let experiment = experimentId || undefined;
      if (newExperiment.trim()) {
        experiment = (await api.createExperiment(newExperiment.trim())).id;
      }
      const body: Json = { spec };
      if (name.trim()) body.name = name.trim();
      if (experiment) body.experiment_id = experiment;
      if (priority.trim()) body.priority = Number(priority);
      if (maxAttempts.trim()) body.max_attempts = Number(maxAttempts);
      const run = await api.createRun(body, idempotencyKey);
      navigate(`/runs/${run.id}`);
    } catch (err) {
      setSubmitError(err);
      if (err instanceof ApiError) setErrors(errorMap(err.errors));
    } finally {
      setBusy(false);
    }
  };

  const unplaced =
    submitError instanceof ApiError ? unplacedErrors(submitError.errors, schema) : [];

  return (
    <div class="page">
      <div class="page-header">
        <h1>New run</h1>
      </div>
      <form onSubmit={submit} class="new-run" noValidate>
        <Section title="Preset and data">
          <div class="form-grid">
            <label for="preset">Preset</label>
            <select
              id="preset"
              value={presetId}
              onChange={(e) => applyPreset((e.target as HTMLSelectElement).value)}
            >
              {allPresets.map((p) => (
                <option key={p.id} value={p.id}>
                  {p.label}
                </option>
              ))}
            </select>
            {(['labeled', 'unlabeled', 'eval'] as const).map((role) => (
              <DatasetPicker
                key={role}
                role={role}
                datasets={ready}
                value={choice[role]}
                onChange={(id) => {
                  const next = { ...choice, [role]: id };
                  setChoice(next);
                  change(
                    ['data', role],
                    id ? { dataset_id: id } : role === 'labeled' ? {} : undefined,
                  );
                }}
              />
            ))}
            {ready.length === 0 && datasets.data && (
              <p class="notice span-all">
                No dataset is ready yet: <a href="#/datasets">upload one</a> first.
              </p>
            )}
          </div>
        </Section>

        <Section title="Run">
          <div class="form-grid">
            <label for="run-name">Name</label>
            <input
              id="run-name"
              value={name}
              placeholder="optional"
              onInput={(e) => setName((e.target as HTMLInputElement).value)}
            />
            <label for="run-experiment">Experiment</label>
            <select
              id="run-experiment"
              value={experimentId}
              onChange={(e) => setExperimentId((e.target as HTMLSelectElement).value)}
            >
              <option value="">none</option>
              {(experiments.data ?? []).map((x) => (
                <option key={x.id} value={x.id}>
                  {x.name}
                </option>
              ))}
            </select>
            <label for="run-new-experiment">Or a new experiment</label>
            <input
              id="run-new-experiment"
              value={newExperiment}
              placeholder="name of a new experiment"
              onInput={(e) => setNewExperiment((e.target as HTMLInputElement).value)}
            />
            <label for="run-priority">Priority</label>
            <input
              id="run-priority"
              type="number"
              step={1}
              value={priority}
              onInput={(e) => setPriority((e.target as HTMLInputElement).value)}
            />
            <label for="run-max-attempts">Max attempts</label>
            <input
              id="run-max-attempts"
              type="number"
              min={1}
              step={1}
              value={maxAttempts}
              onInput={(e) => setMaxAttempts((e.target as HTMLInputElement).value)}
            />
          </div>
        </Section>

        <Section
          title="Spec"
          actions={
            <button
              type="button"
              class="ghost"
              onClick={() => setJsonText(jsonText === null ? JSON.stringify(spec, null, 2) : null)}
            >
              {jsonText === null ? 'Edit as JSON' : 'Back to the form'}
            </button>
          }
        >
          <ErrorBox error={schemaError} />
          {jsonText !== null ? (
            <JsonEditor
              text={jsonText}
              onText={setJsonText}
              onApply={(value) => {
                setSpec(value);
                setJsonText(null);
              }}
            />
          ) : schema && schema.kind === 'object' ? (
            <ObjectFields
              node={schema}
              path={[]}
              value={spec}
              errors={errors}
              onChange={change}
              datasets={ready}
            />
          ) : (
            !schemaError && <p class="muted">Loading the spec schema…</p>
          )}
        </Section>

        <div class="submit-bar">
          {submitError instanceof ApiError && submitError.status === 422 ? (
            <div class="error-box" role="alert">
              <strong>
                The API rejected the spec: {submitError.errors.length} field(s) to fix.
              </strong>
              {unplaced.length > 0 && (
                <ul>
                  {unplaced.map((f) => (
                    <li key={f.field}>
                      <code>{f.field || '(spec)'}</code>: {f.message}
                    </li>
                  ))}
                </ul>
              )}
            </div>
          ) : (
            <ErrorBox error={submitError} />
          )}
          <button type="submit" disabled={busy || jsonText !== null}>
            {busy ? 'Submitting…' : 'Start run'}
          </button>
        </div>
      </form>
    </div>
  );
}

/** Maps the API's field names (`spec.teacher_optimizer.lr`) to spec paths. */
function errorMap(fields: FieldError[]): ErrorMap {
  const map: ErrorMap = new Map();
  for (const f of fields) {
    const key = f.field.replace(/^spec\.?/, '');
    map.set(key, map.has(key) ? `${map.get(key)}; ${f.message}` : f.message);
  }
  return map;
}

/** Errors whose field has no input in the form: they are listed by the submit button. */
function unplacedErrors(fields: FieldError[], schema: FieldNode | null): FieldError[] {
  return fields.filter((f) => {
    if (!f.field.startsWith('spec.')) return true;
    return !document.getElementById(fieldId(f.field.slice(5).split('.'))) || !schema;
  });
}

function DatasetPicker(props: {
  role: 'labeled' | 'unlabeled' | 'eval';
  datasets: Dataset[];
  value: string;
  onChange: (id: string) => void;
}) {
  const id = `dataset-${props.role}`;
  const text = {
    labeled: 'Labeled dataset',
    unlabeled: 'Unlabeled dataset (optional; default: the rest of the labeled one)',
    eval: 'Evaluation dataset (optional)',
  }[props.role];
  return (
    <>
      <label for={id}>{text}</label>
      <select
        id={id}
        value={props.value}
        onChange={(e) => props.onChange((e.target as HTMLSelectElement).value)}
      >
        <option value="">{props.role === 'labeled' ? 'choose…' : 'none'}</option>
        {props.datasets.map((d) => (
          <option key={d.id} value={d.id}>
            {d.name} ({d.kind}, {d.format})
          </option>
        ))}
      </select>
    </>
  );
}

function JsonEditor(props: {
  text: string;
  onText: (t: string) => void;
  onApply: (v: Json) => void;
}) {
  const [error, setError] = useState<string | null>(null);
  const apply = () => {
    try {
      const value = JSON.parse(props.text) as unknown;
      if (!value || typeof value !== 'object' || Array.isArray(value)) {
        throw new Error('The spec must be a JSON object');
      }
      props.onApply(value as Json);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };
  return (
    <div class="stack">
      <label for="spec-json">Spec as JSON</label>
      <textarea
        id="spec-json"
        rows={24}
        spellcheck={false}
        value={props.text}
        onInput={(e) => props.onText((e.target as HTMLTextAreaElement).value)}
        aria-invalid={error ? 'true' : undefined}
      />
      {error && (
        <p class="field-error" role="alert">
          {error}
        </p>
      )}
      <button type="button" onClick={apply}>
        Apply JSON
      </button>
    </div>
  );
}

interface FieldProps {
  path: string[];
  value: unknown;
  errors: ErrorMap;
  onChange: (path: string[], value: unknown) => void;
  datasets: Dataset[];
}

/**
 * The properties in the order of the paper's settings (algorithm, model, data, batch size, ...),
 * which reads better than the schema's alphabetical order; unknown ones keep theirs, at the end.
 */
function ordered(node: Extract<FieldNode, { kind: 'object' }>, path: string[]) {
  const reference = getAt(PAPER_DEFAULTS, path);
  const keys = reference && typeof reference === 'object' ? Object.keys(reference) : [];
  const rank = (k: string) => (keys.includes(k) ? keys.indexOf(k) : keys.length);
  return [...node.properties].sort((a, b) => rank(a[0]) - rank(b[0]));
}

function ObjectFields(props: FieldProps & { node: Extract<FieldNode, { kind: 'object' }> }) {
  const properties = ordered(props.node, props.path);
  const leaves = properties.filter(([, n]) => n.kind !== 'object');
  const groups = properties.filter(([, n]) => n.kind === 'object');
  return (
    <div class="object-fields">
      {leaves.length > 0 && (
        <div class="form-grid">
          {leaves.map(([key, node]) => (
            <Field
              key={key}
              {...props}
              node={node}
              path={[...props.path, key]}
              value={getAt(props.value, [key])}
            />
          ))}
        </div>
      )}
      {groups.map(([key, node]) => (
        <ObjectGroup
          key={key}
          {...props}
          node={node as Extract<FieldNode, { kind: 'object' }>}
          path={[...props.path, key]}
          value={getAt(props.value, [key])}
        />
      ))}
    </div>
  );
}

function ObjectGroup(props: FieldProps & { node: Extract<FieldNode, { kind: 'object' }> }) {
  const key = props.path.join('.');
  const present = props.value !== undefined && props.value !== null;
  const optional = props.node.meta.nullable;
  const error = props.errors.get(key);
  const top = props.path.length === 1;
  return (
    <fieldset class={top ? 'group' : 'group nested'}>
      <legend>
        {props.path[props.path.length - 1]}
        {props.node.meta.description && (
          <span class="hint"> — {prose(props.node.meta.description)}</span>
        )}
      </legend>
      {error && (
        <p class="field-error" role="alert">
          {error}
        </p>
      )}
      {optional && (
        <label class="inline">
          <input
            type="checkbox"
            checked={present}
            onChange={(e) =>
              props.onChange(props.path, (e.target as HTMLInputElement).checked ? {} : undefined)
            }
          />
          Set {props.path[props.path.length - 1]}
        </label>
      )}
      {(!optional || present) && <ObjectFields {...props} />}
    </fieldset>
  );
}

function Field(props: FieldProps & { node: FieldNode }) {
  const { node, path } = props;
  const key = path.join('.');
  const id = fieldId(path);
  const error = props.errors.get(key);
  const fallback =
    node.meta.default !== undefined ? node.meta.default : getAt(PAPER_DEFAULTS, path);
  const describedBy = [node.meta.description ? `${id}-help` : '', error ? `${id}-error` : '']
    .filter(Boolean)
    .join(' ');
  const common = {
    id,
    name: key,
    'aria-invalid': error ? ('true' as const) : undefined,
    'aria-describedby': describedBy || undefined,
  };

  let input;
  if (node.kind === 'boolean') {
    const checked = typeof props.value === 'boolean' ? props.value : fallback === true;
    input = (
      <input
        {...common}
        type="checkbox"
        checked={checked}
        onChange={(e) => props.onChange(path, (e.target as HTMLInputElement).checked)}
      />
    );
  } else if (node.kind === 'enum') {
    input = (
      <select
        {...common}
        value={typeof props.value === 'string' ? props.value : ''}
        onChange={(e) => {
          const v = (e.target as HTMLSelectElement).value;
          props.onChange(path, v === '' ? undefined : v);
        }}
      >
        <option value="">default{fallback !== undefined ? ` (${String(fallback)})` : ''}</option>
        {node.options.map((o) => (
          <option key={o}>{o}</option>
        ))}
      </select>
    );
  } else if (node.kind === 'number') {
    input = (
      <input
        {...common}
        type="number"
        step={node.integer ? 1 : 'any'}
        min={node.minimum}
        max={node.maximum}
        value={typeof props.value === 'number' ? String(props.value) : ''}
        placeholder={placeholder(fallback)}
        onInput={(e) => {
          const raw = (e.target as HTMLInputElement).value.trim();
          props.onChange(path, raw === '' ? undefined : Number(raw));
        }}
      />
    );
  } else if (node.kind === 'string' && path[path.length - 1] === 'dataset_id') {
    input = (
      <select
        {...common}
        value={typeof props.value === 'string' ? props.value : ''}
        onChange={(e) => {
          const v = (e.target as HTMLSelectElement).value;
          props.onChange(path, v === '' ? undefined : v);
        }}
      >
        <option value="">none</option>
        {props.datasets.map((d) => (
          <option key={d.id} value={d.id}>
            {d.name}
          </option>
        ))}
        {typeof props.value === 'string' && !props.datasets.some((d) => d.id === props.value) && (
          <option value={props.value}>{props.value}</option>
        )}
      </select>
    );
  } else if (node.kind === 'array') {
    const list = Array.isArray(props.value) ? (props.value as unknown[]).join(', ') : '';
    input = (
      <input
        {...common}
        value={list}
        placeholder={Array.isArray(fallback) ? fallback.join(', ') : 'comma-separated'}
        onChange={(e) => {
          const raw = (e.target as HTMLInputElement).value.trim();
          if (raw === '') return props.onChange(path, undefined);
          const numeric = node.items.kind === 'number';
          props.onChange(
            path,
            raw.split(',').map((x) => (numeric ? Number(x.trim()) : x.trim())),
          );
        }}
      />
    );
  } else {
    input = (
      <input
        {...common}
        value={typeof props.value === 'string' ? props.value : ''}
        placeholder={placeholder(fallback)}
        onInput={(e) => {
          const raw = (e.target as HTMLInputElement).value;
          props.onChange(path, raw === '' ? undefined : raw);
        }}
      />
    );
  }

  return (
    <>
      <label for={id} title={key}>
        {path[path.length - 1]}
      </label>
      <div class="field">
        {input}
        {node.meta.description && (
          <span id={`${id}-help`} class="hint">
            {prose(node.meta.description)}
          </span>
        )}
        {error && (
          <span id={`${id}-error`} class="field-error" role="alert">
            {error}
          </span>
        )}
      </div>
    </>
  );
}

function placeholder(fallback: unknown): string {
  if (fallback === undefined) return '';
  if (fallback === null) return 'default: null';
  return `default: ${String(fallback)}`;
}

/** A schema description with its `code spans` shown as code. */
function prose(text: string) {
  return text.split('`').map((part, i) => (i % 2 === 1 ? <code key={i}>{part}</code> : part));
}
