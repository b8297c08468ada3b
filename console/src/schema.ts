// Reads the run spec's JSON schema out of the API's OpenAPI document and reduces it to a small
// tree the form generator walks: objects with ordered properties, enums, numbers, booleans,
// strings and arrays, each possibly nullable. `$ref`, `allOf` with one member, `oneOf` /
// `anyOf` with a null member and `type: [T, "null"]` are all resolved here.

/** A schema reduced to what the form needs. */
export type FieldNode =
  | { kind: 'object'; properties: [string, FieldNode][]; required: string[]; meta: Meta }
  | { kind: 'enum'; options: string[]; meta: Meta }
  | { kind: 'boolean'; meta: Meta }
  | { kind: 'number'; integer: boolean; minimum?: number; maximum?: number; meta: Meta }
  | { kind: 'string'; format?: string; meta: Meta }
  | { kind: 'array'; items: FieldNode; meta: Meta }
  | { kind: 'unknown'; meta: Meta };

/** What every node carries besides its type. */
export interface Meta {
  description?: string;
  nullable: boolean;
  default?: unknown;
}

type Json = Record<string, unknown>;

/** The OpenAPI document's `components.schemas`. */
export type SchemaIndex = Record<string, Json>;

const MAX_DEPTH = 12;

/** Resolves `#/components/schemas/Name` references. */
function deref(schema: Json, index: SchemaIndex): Json {
  let current = schema;
  for (let i = 0; i < MAX_DEPTH && typeof current.$ref === 'string'; i++) {
    const name = (current.$ref as string).split('/').pop() ?? '';
    const target = index[name];
    if (!target) throw new Error(`The schema references ${current.$ref}, which is missing`);
    const { $ref: _ignored, ...rest } = current;
    void _ignored;
    current = { ...target, ...rest };
  }
  return current;
}

/** Reduces one schema to a FieldNode. */
export function reduce(schema: Json, index: SchemaIndex, depth = 0): FieldNode {
  if (depth > MAX_DEPTH) return { kind: 'unknown', meta: { nullable: true } };
  let s = deref(schema, index);
  let nullable = s.nullable === true;

  // `allOf: [X]` (utoipa wraps a referenced type to attach a description), and
  // `oneOf: [null, X]` (an Option<T>).
  for (const key of ['allOf', 'oneOf', 'anyOf']) {
    const members = s[key];
    if (!Array.isArray(members)) continue;
    const nonNull = (members as Json[]).filter((m) => m.type !== 'null');
    if (nonNull.length < members.length) nullable = true;
    if (nonNull.length === 1) {
      const { [key]: _drop, ...rest } = s;
      void _drop;
      s = { ...deref(nonNull[0], index), ...rest };
    }
  }

  let type = s.type;
  if (Array.isArray(type)) {
    if (type.includes('null')) nullable = true;
    type = type.find((t) => t !== 'null');
  }
  const meta: Meta = {
    description: typeof s.description === 'string' ? s.description : undefined,
    nullable,
    default: s.default,
  };

  if (Array.isArray(s.enum)) {
    const options = (s.enum as unknown[]).filter((x): x is string => typeof x === 'string');
    return { kind: 'enum', options, meta };
  }
  if (type === 'object' || s.properties) {
    const props = (s.properties ?? {}) as Record<string, Json>;
    const properties: [string, FieldNode][] = Object.entries(props).map(([name, child]) => [
      name,
      reduce(child, index, depth + 1),
    ]);
    const required = Array.isArray(s.required) ? (s.required as string[]) : [];
    return { kind: 'object', properties, required, meta };
  }
  if (type === 'boolean') return { kind: 'boolean', meta };
  if (type === 'integer' || type === 'number') {
    return {
      kind: 'number',
      integer: type === 'integer',
      minimum: typeof s.minimum === 'number' ? s.minimum : undefined,
      maximum: typeof s.maximum === 'number' ? s.maximum : undefined,
      meta,
    };
  }
  if (type === 'string') {
    return { kind: 'string', format: typeof s.format === 'string' ? s.format : undefined, meta };
  }
  if (type === 'array' && s.items && typeof s.items === 'object') {
    return { kind: 'array', items: reduce(s.items as Json, index, depth + 1), meta };
  }
  return { kind: 'unknown', meta };
}

/** Loads `/openapi.json` and returns the reduced RunSpec schema. */
export async function loadRunSpecSchema(): Promise<FieldNode> {
  const res = await fetch('/openapi.json');
  if (!res.ok) throw new Error(`/openapi.json answered HTTP ${res.status}`);
  const doc = (await res.json()) as Json;
  const index = ((doc.components as Json | undefined)?.schemas ?? {}) as SchemaIndex;
  if (!index.RunSpec) throw new Error('/openapi.json has no components.schemas.RunSpec');
  return reduce(index.RunSpec, index);
}

/** The value at a dotted path, or undefined. */
export function getAt(value: unknown, path: string[]): unknown {
  let current = value;
  for (const key of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Json)[key];
  }
  return current;
}

/**
 * A copy of `root` with `value` at `path` (creating objects on the way). `undefined` removes the
 * key, so the server applies its default.
 */
export function setAt(root: Json, path: string[], value: unknown): Json {
  if (path.length === 0) return (value ?? {}) as Json;
  const [head, ...rest] = path;
  const copy: Json = { ...root };
  if (rest.length === 0) {
    if (value === undefined) delete copy[head];
    else copy[head] = value;
    return copy;
  }
  const child = copy[head];
  const base = child && typeof child === 'object' && !Array.isArray(child) ? (child as Json) : {};
  const next = setAt(base, rest, value);
  if (Object.keys(next).length === 0 && value === undefined) delete copy[head];
  else copy[head] = next;
  return copy;
}
