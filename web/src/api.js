// The API client: access token in memory, refresh token in localStorage, one automatic refresh and
// retry when a request answers 401. Errors are ApiError with the server's {code, message, field}.

export const REFRESH_KEY = 'dumont.refresh_token';

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

async function parseBody(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function errorFrom(res, body) {
  const e = body && typeof body === 'object' && body.error;
  if (e && typeof e === 'object') {
    return new ApiError(res.status, e.code || 'error', e.message || `request failed (${res.status})`, e.field);
  }
  return new ApiError(res.status, 'http_' + res.status, `the server answered ${res.status} ${res.statusText || ''}`.trim());
}

export class ApiClient {
  // refreshKey: where the refresh token is kept (the demo console keeps its own, beside a real session).
  constructor({ baseUrl = '', fetchImpl, storage, refreshKey = REFRESH_KEY } = {}) {
    this.baseUrl = baseUrl;
    this.refreshKey = refreshKey;
    this.fetchImpl = fetchImpl || ((...a) => globalThis.fetch(...a));
    this.storage = storage !== undefined ? storage : globalThis.localStorage;
    this.accessToken = null;
    this.refreshing = null; // one refresh at a time, shared by concurrent 401s
    this.onAuthLost = null; // called when the session cannot be refreshed
  }

  get refreshToken() {
    try {
      return this.storage ? this.storage.getItem(this.refreshKey) : null;
    } catch {
      return null;
    }
  }

  set refreshToken(v) {
    try {
      if (!this.storage) return;
      if (v) this.storage.setItem(this.refreshKey, v);
      else this.storage.removeItem(this.refreshKey);
    } catch {
      /* storage unavailable: the session lasts as long as the page */
    }
  }

  hasSession() {
    return !!(this.accessToken || this.refreshToken);
  }

  setTokens(t) {
    this.accessToken = t.access_token;
    if (t.refresh_token) this.refreshToken = t.refresh_token;
  }

  clearTokens() {
    this.accessToken = null;
    this.refreshToken = null;
  }

  async raw(method, path, body, token) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await this.fetchImpl(this.baseUrl + path, {
        method,
        headers,
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      throw new ApiError(0, 'network', 'cannot reach the server: ' + (err && err.message ? err.message : err));
    }
    const data = await parseBody(res);
    if (!res.ok) throw errorFrom(res, data);
    return data;
  }

  // Exchanges the stored refresh token for new tokens; concurrent callers share one request.
  refresh() {
    if (!this.refreshing) {
      const rt = this.refreshToken;
      this.refreshing = (async () => {
        if (!rt) return false;
        try {
          const t = await this.raw('POST', '/api/v1/auth/refresh', { refresh_token: rt });
          this.setTokens(t);
          return true;
        } catch (err) {
          if (err.status === 0) throw err; // offline: keep the refresh token for later
          this.clearTokens();
          return false;
        }
      })().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async request(method, path, body) {
    if (!this.accessToken && this.refreshToken) await this.refresh();
    const sent = this.accessToken;
    try {
      return await this.raw(method, path, body, sent);
    } catch (err) {
      if (err.status !== 401 || !this.refreshToken) {
        if (err.status === 401) this.authLost();
        throw err;
      }
      // Someone else may have refreshed already while this request was in flight.
      const ok = this.accessToken && this.accessToken !== sent ? true : await this.refresh();
      if (!ok) {
        this.authLost();
        throw err;
      }
      try {
        return await this.raw(method, path, body, this.accessToken);
      } catch (err2) {
        if (err2.status === 401) {
          this.clearTokens();
          this.authLost();
        }
        throw err2;
      }
    }
  }

  // Opens a server-sent event stream (GET) and answers the fetch Response once its status is 2xx; the
  // caller reads res.body. Same token handling as request(): one refresh and retry on 401.
  async stream(path, { lastEventId, signal } = {}) {
    if (!this.accessToken && this.refreshToken) await this.refresh();
    const open = async (token) => {
      const headers = { Accept: 'text/event-stream' };
      if (token) headers.Authorization = `Bearer ${token}`;
      if (lastEventId) headers['Last-Event-ID'] = String(lastEventId);
      try {
        return await this.fetchImpl(this.baseUrl + path, { method: 'GET', headers, signal, cache: 'no-store' });
      } catch (err) {
        if (signal && signal.aborted) throw err;
        throw new ApiError(0, 'network', 'cannot reach the server: ' + (err && err.message ? err.message : err));
      }
    };
    const sent = this.accessToken;
    let res = await open(sent);
    if (res.status === 401 && this.refreshToken) {
      const ok = this.accessToken && this.accessToken !== sent ? true : await this.refresh();
      if (ok) res = await open(this.accessToken);
    }
    if (!res.ok) {
      const err = errorFrom(res, await parseBody(res));
      if (err.status === 401) this.authLost();
      throw err;
    }
    return res;
  }

  authLost() {
    if (this.onAuthLost) this.onAuthLost();
  }

  get(path) {
    return this.request('GET', path);
  }
  post(path, body) {
    return this.request('POST', path, body === undefined ? {} : body);
  }
  put(path, body) {
    return this.request('PUT', path, body);
  }
  patch(path, body) {
    return this.request('PATCH', path, body);
  }
  del(path) {
    return this.request('DELETE', path);
  }

  async login(email, password) {
    const t = await this.raw('POST', '/api/v1/auth/login', { email, password });
    this.setTokens(t);
    return t;
  }

  // Demo mode: a new demo account of our own (404 when the server has demo mode off).
  async demoSession() {
    const t = await this.raw('POST', '/api/v1/demo/session');
    this.setTokens(t);
    return t;
  }

  register(email, password) {
    return this.raw('POST', '/api/v1/auth/register', { email, password });
  }

  async logout() {
    const rt = this.refreshToken;
    try {
      if (this.accessToken) await this.raw('POST', '/api/v1/auth/logout', rt ? { refresh_token: rt } : {}, this.accessToken);
    } finally {
      this.clearTokens();
    }
  }
}

export const api = new ApiClient();
