// Reading a `text/event-stream` body: blank-line separated blocks of `field: value` lines.
// Kept free of imports so it can be tested on its own.

/** One server-sent event. */
export interface StreamEvent {
  id: number | null;
  event: string;
  data: unknown;
}

/** Parses the text/event-stream framing: blank-line separated blocks of `field: value`. */
export async function readStream(
  body: ReadableStream<Uint8Array>,
  onEvent: (e: StreamEvent) => void,
): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let carry = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    // A `\r\n` may be split between two chunks: hold a trailing `\r` back until the next one.
    let text = carry + decoder.decode(value, { stream: true });
    carry = text.endsWith('\r') ? '\r' : '';
    if (carry) text = text.slice(0, -1);
    buffer += text.replace(/\r\n?/g, '\n');
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const parsed = parseBlock(block);
      if (parsed) onEvent(parsed);
    }
  }
}

/** Parses one block of an event stream; null when it carries no data (a comment, a ping). */
export function parseBlock(block: string): StreamEvent | null {
  let id: number | null = null;
  let event = 'message';
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'id') id = value === '' ? null : Number(value);
    else if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0) return null;
  const text = data.join('\n');
  return { id: Number.isFinite(id) ? id : null, event, data: safeJson(text) ?? text };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
