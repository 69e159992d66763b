import { describe, expect, it, vi } from 'vitest';
import { ApiClient, ApiError, REFRESH_KEY } from './api.js';

function memoryStorage(init = {}) {
  const m = new Map(Object.entries(init));
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
  };
}

const json = (status, body) =>
  new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
const unauth = () => json(401, { error: { code: 'unauthenticated', message: 'token expired' } });

// A fake server: /auth/refresh rotates tokens; other routes accept only the current access token.
function fakeServer({ refreshOk = true } = {}) {
  const state = { access: 'a2', refreshes: 0, calls: [] };
  const fetchImpl = vi.fn(async (url, init) => {
    const auth = init.headers.Authorization || '';
    state.calls.push(`${init.method} ${url} ${auth}`);
    if (url === '/api/v1/auth/refresh') {
      state.refreshes++;
      const body = JSON.parse(init.body);
      if (!refreshOk || body.refresh_token !== 'r1') {
        return json(401, { error: { code: 'unauthenticated', message: 'invalid refresh token' } });
      }
      return json(200, { access_token: state.access, refresh_token: 'r2', token_type: 'bearer', expires_in: 86400 });
    }
    if (auth !== `Bearer ${state.access}`) return unauth();
    return json(200, { ok: true, url });
  });
  return { state, fetchImpl };
}

describe('ApiClient refresh on 401', () => {
  it('refreshes once, rotates the stored refresh token and retries the request', async () => {
    const { state, fetchImpl } = fakeServer();
    const storage = memoryStorage({ [REFRESH_KEY]: 'r1' });
    const c = new ApiClient({ fetchImpl, storage });
    c.accessToken = 'a1-expired';
    const r = await c.get('/api/v1/instances');
    expect(r).toEqual({ ok: true, url: '/api/v1/instances' });
    expect(state.refreshes).toBe(1);
    expect(c.accessToken).toBe('a2');
    expect(storage.getItem(REFRESH_KEY)).toBe('r2');
    expect(state.calls).toEqual([
      'GET /api/v1/instances Bearer a1-expired',
      'POST /api/v1/auth/refresh ',
      'GET /api/v1/instances Bearer a2',
    ]);
  });

  it('shares one refresh among concurrent requests', async () => {
    const { state, fetchImpl } = fakeServer();
    const c = new ApiClient({ fetchImpl, storage: memoryStorage({ [REFRESH_KEY]: 'r1' }) });
    c.accessToken = 'old';
    const results = await Promise.all([c.get('/a'), c.get('/b'), c.get('/c')]);
    expect(results.map((r) => r.url)).toEqual(['/a', '/b', '/c']);
    expect(state.refreshes).toBe(1);
  });

  it('restores a session from the stored refresh token before the first request', async () => {
    const { state, fetchImpl } = fakeServer();
    const c = new ApiClient({ fetchImpl, storage: memoryStorage({ [REFRESH_KEY]: 'r1' }) });
    await c.get('/api/v1/auth/me');
    expect(state.calls[0]).toBe('POST /api/v1/auth/refresh ');
    expect(state.calls).toHaveLength(2);
  });

  it('gives up when the refresh fails: tokens cleared, onAuthLost called, the 401 is thrown', async () => {
    const { state, fetchImpl } = fakeServer({ refreshOk: false });
    const storage = memoryStorage({ [REFRESH_KEY]: 'r1' });
    const c = new ApiClient({ fetchImpl, storage });
    c.accessToken = 'old';
    c.onAuthLost = vi.fn();
    const err = await c.get('/x').catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(401);
    expect(err.message).toBe('token expired');
    expect(state.refreshes).toBe(1);
    expect(c.onAuthLost).toHaveBeenCalledTimes(1);
    expect(c.accessToken).toBeNull();
    expect(storage.getItem(REFRESH_KEY)).toBeNull();
  });

  it('retries only once: a second 401 after refreshing is returned to the caller', async () => {
    let refreshes = 0;
    const fetchImpl = vi.fn(async (url) => {
      if (url === '/api/v1/auth/refresh') {
        refreshes++;
        return json(200, { access_token: 'a' + refreshes, refresh_token: 'r' + refreshes, expires_in: 1 });
      }
      return unauth();
    });
    const c = new ApiClient({ fetchImpl, storage: memoryStorage({ [REFRESH_KEY]: 'r0' }) });
    c.accessToken = 'a0';
    c.onAuthLost = vi.fn();
    await expect(c.get('/x')).rejects.toMatchObject({ status: 401 });
    expect(refreshes).toBe(1);
    expect(fetchImpl).toHaveBeenCalledTimes(3);
    expect(c.onAuthLost).toHaveBeenCalled();
  });

  it('does not refresh on other errors and carries code, message and field', async () => {
    const fetchImpl = vi.fn(async () =>
      json(400, { error: { code: 'invalid_argument', message: 'name must not be empty', field: 'name' } }),
    );
    const c = new ApiClient({ fetchImpl, storage: memoryStorage({ [REFRESH_KEY]: 'r1' }) });
    c.accessToken = 'a';
    const err = await c.post('/api/v1/instances', { name: '' }).catch((e) => e);
    expect(err).toMatchObject({ status: 400, code: 'invalid_argument', message: 'name must not be empty', field: 'name' });
    expect(fetchImpl).toHaveBeenCalledTimes(1);
  });

  it('reports an unreachable server as a network error', async () => {
    const c = new ApiClient({ fetchImpl: async () => Promise.reject(new TypeError('Failed to fetch')), storage: memoryStorage() });
    await expect(c.login('a@b.c', 'x')).rejects.toMatchObject({ status: 0, code: 'network' });
  });
});

describe('ApiClient.stream (server-sent events over fetch)', () => {
  it('sends the token, Accept and Last-Event-ID, refreshes once on 401', async () => {
    const { state, fetchImpl } = fakeServer();
    const c = new ApiClient({ fetchImpl, storage: memoryStorage({ [REFRESH_KEY]: 'r1' }) });
    c.accessToken = 'stale';
    const res = await c.stream('/api/v1/deploys/d1/events', { lastEventId: '4' });
    expect(res.status).toBe(200);
    expect(state.refreshes).toBe(1);
    const last = fetchImpl.mock.calls.at(-1)[1];
    expect(last.headers).toMatchObject({ Accept: 'text/event-stream', Authorization: 'Bearer a2', 'Last-Event-ID': '4' });
  });

  it('throws the API error of a refused stream', async () => {
    const fetchImpl = vi.fn(async () => json(404, { error: { code: 'not_found', message: 'deploy not found' } }));
    const c = new ApiClient({ fetchImpl, storage: memoryStorage() });
    c.accessToken = 'a';
    await expect(c.stream('/api/v1/deploys/nope/events')).rejects.toMatchObject({ status: 404, message: 'deploy not found' });
  });
});

describe('demo sessions', () => {
  it('keeps the demo refresh token in its own slot and takes tokens from POST /demo/session', async () => {
    const fetchImpl = vi.fn(async () => json(200, { access_token: 'da', refresh_token: 'drt_demo', expires_in: 7200, demo: true }));
    const storage = memoryStorage({ [REFRESH_KEY]: 'real' });
    const c = new ApiClient({ fetchImpl, storage, refreshKey: 'dumont.demo.refresh_token' });
    expect(c.hasSession()).toBe(false);
    await c.demoSession();
    expect(fetchImpl.mock.calls[0][0]).toBe('/api/v1/demo/session');
    expect(fetchImpl.mock.calls[0][1].method).toBe('POST');
    expect(c.accessToken).toBe('da');
    expect(storage.getItem('dumont.demo.refresh_token')).toBe('drt_demo');
    expect(storage.getItem(REFRESH_KEY)).toBe('real'); // the real session is untouched
  });
});
