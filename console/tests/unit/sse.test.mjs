// The event-stream reader the run page uses instead of EventSource (which cannot send the
// bearer token): framing, ids, comments, and chunks split anywhere, including inside `\r\n`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseBlock, readStream } from '../../.unit-build/sse.js';

test('a block gives its id, event name and JSON data', () => {
  const e = parseBlock('id: 42\nevent: metrics\ndata: {"step": 3, "values": {"h": 0.5}}');
  assert.deepEqual(e, { id: 42, event: 'metrics', data: { step: 3, values: { h: 0.5 } } });
});

test('comments and keep-alives carry no event', () => {
  assert.equal(parseBlock(': keep-alive'), null);
  assert.equal(parseBlock('id: 3'), null);
});

test('multi-line data is joined, and text that is not JSON stays text', () => {
  assert.deepEqual(parseBlock('data: one\ndata: two'), {
    id: null,
    event: 'message',
    data: 'one\ntwo',
  });
});

function streamOf(chunks) {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

test('events split across chunks, with CRLF line ends, arrive whole and once', async () => {
  const text =
    'id: 1\r\nevent: log\r\ndata: {"line": "a"}\r\n\r\n: ping\r\n\r\n' +
    'id: 2\r\nevent: status\r\ndata: {"status": "running"}\r\n\r\n';
  // Split at every position, so each boundary (including between \r and \n) is exercised.
  for (let cut = 1; cut < text.length; cut++) {
    const seen = [];
    await readStream(streamOf([text.slice(0, cut), text.slice(cut)]), (e) => seen.push(e));
    assert.deepEqual(
      seen.map((e) => [e.id, e.event]),
      [
        [1, 'log'],
        [2, 'status'],
      ],
      `split at ${cut}`,
    );
  }
});
