import { describe, expect, it, vi } from 'vitest';
import { foldDeploy, followDeploy, mergeDeployRecord, SseParser } from './sse.js';

describe('SseParser', () => {
  it('parses events split at any byte, keeps the last id, skips comments', () => {
    const text =
      ': keep-alive\n\nid: 1\nevent: deploy_started\ndata: {"provider":"local"}\n\nid: 2\nevent: batch_started\ndata: {"batch":1}\n\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const p = new SseParser();
      const events = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
      expect(events).toEqual([
        { type: 'deploy_started', data: '{"provider":"local"}', id: '1' },
        { type: 'batch_started', data: '{"batch":1}', id: '2' },
      ]);
      expect(p.lastEventId).toBe('2');
    }
  });

  it('accepts CRLF and CR line ends, also when a CRLF is split between chunks', () => {
    const p = new SseParser();
    const out = [...p.push('id: 7\r\nevent: x\r'), ...p.push('\ndata: a\r\n\r'), ...p.push('\nid: 8\revent: y\rdata: b\r\r')];
    expect(out).toEqual([
      { type: 'x', data: 'a', id: '7' },
      { type: 'y', data: 'b', id: '8' },
    ]);
  });

  it('joins data lines, defaults the type, strips one space, drops events without data', () => {
    const p = new SseParser();
    const out = p.push('data:  two spaces\ndata:second\n\nid: 3\n\nretry: 1500\nevent: only-type\n\n');
    expect(out).toEqual([{ type: 'message', data: ' two spaces\nsecond', id: '' }]);
    expect(p.lastEventId).toBe('3');
    expect(p.retry).toBe(1500);
  });

  it('waits for the blank line before dispatching', () => {
    const p = new SseParser();
    expect(p.push('id: 1\nevent: a\ndata: {}\n')).toEqual([]);
    expect(p.push('\n')).toHaveLength(1);
  });
});

const enc = new TextEncoder();
const frame = (seq, type, data) => `id: ${seq}\nevent: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
// A fetch Response-like object whose body yields the given chunks (then ends, or errors).
function streamResponse(chunks, { fail = false } = {}) {
  let i = 0;
  return {
    ok: true,
    status: 200,
    body: {
      getReader: () => ({
        read: async () => {
          if (i < chunks.length) return { value: enc.encode(chunks[i++]), done: false };
          if (fail) throw new TypeError('network error');
          return { value: undefined, done: true };
        },
        cancel: async () => {},
      }),
    },
  };
}

describe('followDeploy', () => {
  it('reads the stream to the terminal event, in order, once each', async () => {
    const api = {
      stream: vi.fn(async () =>
        streamResponse([
          frame(1, 'deploy_started', { provider: 'local', offers: 1 }),
          frame(2, 'batch_started', { batch: 1 }).slice(0, 10),
          frame(2, 'batch_started', { batch: 1 }).slice(10) + frame(3, 'deploy_succeeded', { time_to_ready_s: 2 }),
        ]),
      ),
      get: vi.fn(),
    };
    const seen = [];
    const statuses = [];
    const last = await followDeploy(api, 'dep_1', { onEvent: (e) => seen.push(e), onStatus: (s) => statuses.push(s) });
    expect(seen.map((e) => [e.seq, e.type])).toEqual([
      [1, 'deploy_started'],
      [2, 'batch_started'],
      [3, 'deploy_succeeded'],
    ]);
    expect(seen[0].data).toEqual({ provider: 'local', offers: 1 });
    expect(last).toBe(3);
    expect(api.stream).toHaveBeenCalledTimes(1);
    expect(api.stream.mock.calls[0][0]).toBe('/api/v1/deploys/dep_1/events');
    expect(api.get).not.toHaveBeenCalled();
    expect(statuses.at(-1)).toBe('done');
  });

  it('reconnects with Last-Event-ID when the stream drops, without repeating events', async () => {
    const responses = [
      streamResponse([frame(1, 'deploy_started', {}), frame(2, 'batch_started', {})], { fail: true }),
      // the server resumes after 2 but repeats 2 once (we must skip it)
      streamResponse([frame(2, 'batch_started', {}), frame(3, 'machine_created', { label: 'm1' }), frame(4, 'deploy_failed', { reason: 'x' })]),
    ];
    const api = { stream: vi.fn(async () => responses.shift()), get: vi.fn() };
    const seen = [];
    await followDeploy(api, 'dep_2', { onEvent: (e) => seen.push(e.seq), retryMs: 1 });
    expect(seen).toEqual([1, 2, 3, 4]);
    expect(api.stream).toHaveBeenCalledTimes(2);
    expect(api.stream.mock.calls[0][1].lastEventId).toBeUndefined();
    expect(api.stream.mock.calls[1][1].lastEventId).toBe('2');
  });

  it('falls back to polling ?format=json after repeated stream failures', async () => {
    const api = {
      stream: vi.fn(async () => {
        throw Object.assign(new Error('cannot reach the server'), { status: 0 });
      }),
      get: vi
        .fn()
        .mockResolvedValueOnce({ events: [{ seq: 1, type: 'deploy_started', data: {}, time_ms: 5 }], state: 'running' })
        .mockResolvedValueOnce({ events: [{ seq: 2, type: 'deploy_succeeded', data: { time_to_ready_s: 1 } }], state: 'succeeded' }),
    };
    const seen = [];
    const statuses = [];
    await followDeploy(api, 'dep_3', { onEvent: (e) => seen.push(e.type), onStatus: (s) => statuses.push(s), retryMs: 1, pollMs: 1 });
    expect(api.stream).toHaveBeenCalledTimes(3);
    expect(api.get.mock.calls.map((c) => c[0])).toEqual([
      '/api/v1/deploys/dep_3/events?format=json&after=0',
      '/api/v1/deploys/dep_3/events?format=json&after=1',
    ]);
    expect(seen).toEqual(['deploy_started', 'deploy_succeeded']);
    expect(statuses).toContain('polling');
  });

  it('gives up on a deploy that does not exist', async () => {
    const api = { stream: vi.fn(async () => Promise.reject(Object.assign(new Error('deploy not found'), { status: 404 }))), get: vi.fn() };
    await expect(followDeploy(api, 'dep_x', { onEvent: () => {} })).rejects.toThrow('deploy not found');
    expect(api.get).not.toHaveBeenCalled();
  });

  it('stops when aborted', async () => {
    const ctl = new AbortController();
    const api = {
      stream: vi.fn(async () => {
        ctl.abort();
        throw new DOMException('aborted', 'AbortError');
      }),
      get: vi.fn(),
    };
    await followDeploy(api, 'dep_4', { onEvent: () => {}, signal: ctl.signal });
    expect(api.get).not.toHaveBeenCalled();
  });
});

describe('foldDeploy', () => {
  const events = [
    { seq: 1, type: 'deploy_started', data: { provider: 'sim', offers: 8 } },
    { seq: 2, type: 'batch_started', data: { batch: 1 } },
    { seq: 3, type: 'machine_created', data: { label: 'm-1', machine_id: 'sim-1', batch: 1, offer: { id: 'o1', price_per_hour: 0.5 } } },
    { seq: 4, type: 'machine_created', data: { label: 'm-2', machine_id: 'sim-2', batch: 1, offer: { id: 'o2', price_per_hour: 0.6 } } },
    { seq: 5, type: 'machine_failed', data: { label: 'm-3', offer: { id: 'o3' }, error: 'stockout' } },
    { seq: 6, type: 'machine_state', data: { label: 'm-2', machine_id: 'sim-2', state: 'running', reachable: true } },
    { seq: 7, type: 'machine_destroyed', data: { label: 'm-1', machine_id: 'sim-1', reason: 'loser', billed_seconds: 12, cost_usd: 0.0017 } },
    {
      seq: 8,
      type: 'deploy_succeeded',
      data: { winner: { label: 'm-2', machine_id: 'sim-2', offer: { id: 'o2' } }, time_to_ready_s: 3.2, loser_cost_usd: 0.0017, machines_started: 3 },
    },
  ];
  it('turns the events into the race: machines, winner, time to ready, cost of losers', () => {
    const s = events.reduce(foldDeploy, undefined);
    expect(s.phase).toBe('succeeded');
    expect(s.order).toEqual(['m-1', 'm-2', 'm-3']);
    expect(s.machines['m-1']).toMatchObject({ destroyed: true, end: 'loser', cost_usd: 0.0017, batch: 1 });
    expect(s.machines['m-2']).toMatchObject({ winner: true, state: 'running', reachable: true });
    expect(s.machines['m-3']).toMatchObject({ state: 'failed', error: 'stockout' });
    expect(s.timeToReady).toBe(3.2);
    expect(s.loserCost).toBe(0.0017);
    expect(s.batches).toBe(1);
  });

  it('takes billed time and cost from the deploy record', () => {
    const s = mergeDeployRecord(events.reduce(foldDeploy, undefined), {
      state: 'succeeded',
      winner_machine_id: 'sim-2',
      loser_cost_usd: 0.002,
      machines: [{ label: 'm-2', machine_id: 'sim-2', batch: 1, offer: { id: 'o2' }, state: 'running', reachable: true, end: 'winner', billed_seconds: 4, cost_usd: 0.0007 }],
    });
    expect(s.machines['m-2']).toMatchObject({ billed_seconds: 4, cost_usd: 0.0007, winner: true });
    expect(s.loserCost).toBe(0.002);
  });
});
