// The spec form's schema reader, on the shapes utoipa writes (a `$ref` with a sibling
// description, `oneOf` with a null member, `type: [T, "null"]`, string enums) and, when it has
// been generated, on the api's committed OpenAPI document itself.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { reduce, getAt, setAt } from '../../.unit-build/schema.js';

const INDEX = {
  Algorithm: { type: 'string', enum: ['mpl', 'uda', 'supervised'] },
  Source: {
    type: 'object',
    properties: {
      dataset_id: { type: ['string', 'null'], format: 'uuid', description: 'A dataset id.' },
      format: { oneOf: [{ type: 'null' }, { $ref: '#/components/schemas/Format' }] },
    },
  },
  Format: { type: 'string', enum: ['idx', 'cifar10'] },
  Spec: {
    type: 'object',
    required: ['data'],
    properties: {
      algorithm: { $ref: '#/components/schemas/Algorithm', description: 'Which algorithm.' },
      grad_clip: { type: ['number', 'null'], format: 'double' },
      batch_size: { type: 'integer', minimum: 0 },
      data: {
        type: 'object',
        properties: {
          labeled: { $ref: '#/components/schemas/Source' },
          eval: {
            oneOf: [
              { type: 'null' },
              { $ref: '#/components/schemas/Source', description: 'Test data.' },
            ],
          },
          mean: { type: 'array', items: { type: 'number' } },
        },
      },
    },
  },
};

const child = (node, name) => node.properties.find(([key]) => key === name)?.[1];

test('references are resolved and keep the description written beside them', () => {
  const spec = reduce(INDEX.Spec, INDEX);
  const algorithm = child(spec, 'algorithm');
  assert.equal(algorithm.kind, 'enum');
  assert.deepEqual(algorithm.options, ['mpl', 'uda', 'supervised']);
  assert.equal(algorithm.meta.description, 'Which algorithm.');
});

test('nullable members become nullable nodes of the non-null type', () => {
  const spec = reduce(INDEX.Spec, INDEX);
  const clip = child(spec, 'grad_clip');
  assert.equal(clip.kind, 'number');
  assert.equal(clip.integer, false);
  assert.equal(clip.meta.nullable, true);
  const evalSource = child(child(spec, 'data'), 'eval');
  assert.equal(evalSource.kind, 'object');
  assert.equal(evalSource.meta.nullable, true);
  assert.equal(evalSource.meta.description, 'Test data.');
  const format = child(evalSource, 'format');
  assert.equal(format.kind, 'enum');
  assert.equal(format.meta.nullable, true);
  const id = child(evalSource, 'dataset_id');
  assert.equal(id.kind, 'string');
  assert.equal(id.format, 'uuid');
  assert.equal(child(child(spec, 'data'), 'mean').kind, 'array');
  assert.equal(child(spec, 'batch_size').integer, true);
});

test('a missing reference is reported by name', () => {
  assert.throws(
    () => reduce({ $ref: '#/components/schemas/Nowhere' }, {}),
    /#\/components\/schemas\/Nowhere/,
  );
});

test('setAt writes nested values and removes keys set to undefined', () => {
  let spec = {};
  spec = setAt(spec, ['teacher_optimizer', 'lr'], 0.1);
  assert.deepEqual(spec, { teacher_optimizer: { lr: 0.1 } });
  assert.equal(getAt(spec, ['teacher_optimizer', 'lr']), 0.1);
  const before = spec;
  spec = setAt(spec, ['teacher_optimizer', 'lr'], undefined);
  assert.deepEqual(spec, {}, 'an emptied group is dropped so the server default applies');
  assert.deepEqual(before, { teacher_optimizer: { lr: 0.1 } }, 'the old value is not mutated');
});

const OPENAPI = new URL('../../../openapi/openapi.json', import.meta.url);

test("the api's RunSpec schema reduces to the fields the form relies on", (t) => {
  if (!existsSync(OPENAPI)) {
    t.skip('openapi/openapi.json has not been generated');
    return;
  }
  const doc = JSON.parse(readFileSync(OPENAPI, 'utf8'));
  const index = doc.components.schemas;
  const spec = reduce(index.RunSpec, index);
  assert.equal(spec.kind, 'object');
  assert.deepEqual(child(spec, 'algorithm').options.sort(), ['mpl', 'supervised', 'uda']);
  const labeled = child(child(spec, 'data'), 'labeled');
  assert.equal(child(labeled, 'dataset_id').format, 'uuid');
  assert.equal(child(child(spec, 'data'), 'unlabeled').meta.nullable, true);
  assert.equal(child(child(spec, 'teacher_optimizer'), 'lr').kind, 'number');
  assert.equal(child(child(spec, 'mpl'), 'h_baseline').kind, 'boolean');
  assert.equal(child(spec, 'total_steps').integer, true);
});
