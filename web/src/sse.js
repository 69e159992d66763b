// Server-sent events without EventSource (which cannot send an Authorization header): a parser for the
// text/event-stream format (https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream)
// and followDeploy(), which reads GET /api/v1/deploys/{id}/events through fetch() + ReadableStream,
// reconnects with Last-Event-ID, and falls back to polling ?format=json when streaming keeps failing.

// Feed it text as it arrives (any chunking); it returns the events completed by that text.
export class SseParser {
  constructor() {
    this.buf = '';
    this.data = [];
    this.type = '';
    this.lastEventId = '';
    this.retry = null;
    this.sawCR = false; // a chunk ended in '\r': a '\n' starting the next one belongs to that line end
  }

  push(text) {
    const out = [];
    let s = text;
    if (this.sawCR && s.startsWith('\n')) s = s.slice(1);
    this.sawCR = false;
    this.buf += s;
    let start = 0;
    for (let i = 0; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (c !== '\n' && c !== '\r') continue;
      if (c === '\r') {
        if (i + 1 < this.buf.length) {
          if (this.buf[i + 1] === '\n') {
            this.line(this.buf.slice(start, i), out);
            i++;
            start = i + 1;
            continue;
          }
        } else {
          this.sawCR = true;
        }
      }
      this.line(this.buf.slice(start, i), out);
      start = i + 1;
    }
    this.buf = this.buf.slice(start);
    return out;
  }

  line(line, out) {
    if (line === '') {
      // Dispatch: an event with no data line is dropped (the id still counts).
      if (this.data.length) {
        out.push({ type: this.type || 'message', data: this.data.join('\n'), id: this.lastEventId });
      }
      this.data = [];
      this.type = '';
      return;
    }
    if (line.startsWith(':')) return; // comment (keep-alive)
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.type = value;
    else if (field === 'id') {
      if (!value.includes('\0')) this.lastEventId = value;
    } else if (field === 'retry') {
      if (/^\d+$/.test(value)) this.retry = Number(value);
    }
  }
}

export const TERMINAL = new Set(['deploy_succeeded', 'deploy_failed']);

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    if (signal && signal.aborted) return resolve();
    const t = setTimeout(resolve, ms);
    signal && signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

// Follows one deploy's events until a terminal event (or until signal aborts). Calls onEvent({seq, type,
// data, time_ms?}) once per event in order (never twice: events at or below the last seq are skipped) and
// onStatus('streaming' | 'reconnecting' | 'polling' | 'done', detail) when the transport changes.
// Streaming is retried with Last-Event-ID; after `maxStreamFailures` failures in a row (or without
// ReadableStream support) it polls ?format=json&after=N every `pollMs`.
export async function followDeploy(api, deployId, { onEvent, onStatus = () => {}, signal, pollMs = 1000, retryMs = 500, maxStreamFailures = 3 } = {}) {
  const base = `/api/v1/deploys/${encodeURIComponent(deployId)}/events`;
  let last = 0;
  let done = false;
  const deliver = (ev) => {
    if (ev.seq <= last) return;
    last = ev.seq;
    onEvent(ev);
    if (TERMINAL.has(ev.type)) done = true;
  };

  let failures = 0;
  const canStream = typeof api.stream === 'function' && typeof TextDecoder !== 'undefined';
  while (!done && !(signal && signal.aborted) && canStream && failures < maxStreamFailures) {
    onStatus(failures || last ? 'reconnecting' : 'streaming', last ? { after: last } : undefined);
    let progressed = false;
    try {
      const res = await api.stream(base, { lastEventId: last ? String(last) : undefined, signal });
      if (!res.body || typeof res.body.getReader !== 'function') throw new Error('streaming is not supported here');
      onStatus('streaming');
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { value, done: end } = await reader.read();
        const text = end ? decoder.decode() : decoder.decode(value, { stream: true });
        for (const e of parser.push(text)) {
          let data = {};
          try {
            data = JSON.parse(e.data);
          } catch {
            data = { raw: e.data };
          }
          const seq = Number(e.id);
          if (!Number.isFinite(seq)) continue;
          progressed = true;
          deliver({ seq, type: e.type, data });
        }
        if (end || done) break;
      }
      if (done) {
        try {
          await reader.cancel();
        } catch {
          /* already closed */
        }
      }
      // A stream that ended without the last event (server deadline, proxy) is resumed at once.
      failures = progressed ? 0 : failures + 1;
    } catch (err) {
      if (signal && signal.aborted) break;
      if (err && (err.status === 404 || err.status === 403 || err.status === 400)) throw err; // will not get better
      failures++;
    }
    if (!done && failures) await sleep(retryMs * failures, signal);
  }

  while (!done && !(signal && signal.aborted)) {
    onStatus('polling', { after: last });
    try {
      const r = await api.get(`${base}?format=json&after=${last}`);
      for (const e of r.events || []) deliver({ seq: e.seq, type: e.type, data: e.data || {}, time_ms: e.time_ms });
    } catch (err) {
      if (err && (err.status === 404 || err.status === 403 || err.status === 400)) throw err;
    }
    if (!done) await sleep(pollMs, signal);
  }
  if (done) onStatus('done');
  return last;
}

// The race as a table: one row per machine the deploy started, folded from its events.
export function foldDeploy(state, ev) {
  const s = state || { phase: 'pending', machines: {}, order: [], events: [], batches: 0 };
  const next = { ...s, machines: { ...s.machines }, order: [...s.order], events: [...s.events, ev] };
  const d = ev.data || {};
  const touch = (label, patch) => {
    if (!label) return;
    if (!next.machines[label]) next.order.push(label);
    next.machines[label] = { label, ...next.machines[label], ...patch };
  };
  switch (ev.type) {
    case 'deploy_started':
      next.phase = 'running';
      next.provider = d.provider;
      next.offersAvailable = d.offers;
      next.reason = d.reason;
      break;
    case 'batch_started':
      next.batches = Math.max(s.batches, d.batch || 0);
      break;
    case 'machine_created':
      touch(d.label, { machine_id: d.machine_id, batch: d.batch, offer: d.offer, state: 'pending', reachable: false });
      break;
    case 'machine_failed':
      touch(d.label, { offer: d.offer, state: 'failed', error: d.error, end: 'create_failed' });
      break;
    case 'machine_state':
      touch(d.label, { machine_id: d.machine_id || next.machines[d.label]?.machine_id, state: d.state, reachable: !!d.reachable });
      break;
    case 'machine_destroyed':
      touch(d.label, { machine_id: d.machine_id, destroyed: true, end: d.reason, billed_seconds: d.billed_seconds, cost_usd: d.cost_usd });
      break;
    case 'deploy_succeeded':
      next.phase = 'succeeded';
      next.winner = d.winner;
      next.timeToReady = d.time_to_ready_s;
      next.loserCost = d.loser_cost_usd;
      next.totalCost = d.total_cost_usd;
      next.machinesStarted = d.machines_started;
      if (d.winner) touch(d.winner.label, { winner: true, machine_id: d.winner.machine_id, offer: d.winner.offer || next.machines[d.winner.label]?.offer });
      break;
    case 'deploy_failed':
      next.phase = 'failed';
      next.failure = d.reason;
      next.totalCost = d.total_cost_usd;
      next.machinesStarted = d.machines_started;
      break;
    default:
      break;
  }
  return next;
}

// Merges the deploy's own record (GET /deploys/{id}: billed seconds and cost of every machine) into the fold.
export function mergeDeployRecord(state, deploy) {
  if (!deploy) return state;
  const next = { ...state, machines: { ...state.machines }, order: [...state.order] };
  for (const m of deploy.machines || []) {
    if (!next.machines[m.label]) next.order.push(m.label);
    next.machines[m.label] = {
      ...next.machines[m.label],
      label: m.label,
      machine_id: m.machine_id || next.machines[m.label]?.machine_id,
      batch: m.batch,
      offer: m.offer,
      state: m.state,
      reachable: m.reachable,
      end: m.end ?? next.machines[m.label]?.end,
      destroyed: next.machines[m.label]?.destroyed || (m.alive === false && m.end !== 'winner' && m.end != null),
      billed_seconds: m.billed_seconds,
      cost_usd: m.cost_usd,
      winner: deploy.winner_machine_id ? m.machine_id === deploy.winner_machine_id : next.machines[m.label]?.winner,
    };
  }
  if (deploy.loser_cost_usd != null) next.loserCost = deploy.loser_cost_usd;
  if (deploy.total_cost_usd != null) next.totalCost = deploy.total_cost_usd;
  if (deploy.state === 'succeeded' || deploy.state === 'failed') next.phase = deploy.state;
  if (deploy.state === 'failed' && !next.failure) next.failure = deploy.message;
  return next;
}
