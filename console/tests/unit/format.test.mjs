// Helpers behind the runs table and the compare page.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { accuracy, flatten, duration, bytes } from '../../.unit-build/format.js';

test('specs flatten to dotted keys, arrays and nulls kept as values', () => {
  const flat = flatten({
    algorithm: 'mpl',
    teacher_optimizer: { lr: 0.05, nesterov: true },
    data: { labeled: { dataset_id: 'x' }, normalization: null, mean: [0.5] },
  });
  assert.deepEqual(flat, {
    algorithm: 'mpl',
    'teacher_optimizer.lr': 0.05,
    'teacher_optimizer.nesterov': true,
    'data.labeled.dataset_id': 'x',
    'data.normalization': null,
    'data.mean': [0.5],
  });
});

test("the accuracy shown is the student's, preferring the fine-tuned one", () => {
  assert.equal(accuracy({ 'eval/teacher/top1': 0.9, 'eval/student/top1': 0.8 }), 0.8);
  assert.equal(accuracy({ 'eval/student/top1': 0.8, 'eval/finetuned/top1': 0.85 }), 0.85);
  assert.equal(accuracy({ 'student/top1': 0.7 }), 0.7);
  assert.equal(accuracy({ 'eval/student/loss': 1.2 }), null);
  assert.equal(accuracy(null), null);
});

test('durations and sizes read like a person would write them', () => {
  assert.equal(duration(5), '5s');
  assert.equal(duration(125), '2m 05s');
  assert.equal(duration(3 * 3600 + 120), '3h 02m');
  assert.equal(duration(null), '–');
  assert.equal(bytes(512), '512 B');
  assert.equal(bytes(1536), '1.5 KiB');
});
