import { cleanup, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from './api.js';
import { App } from './App.jsx';
import { appPath, baseOf, DEMO_BASE } from './router.jsx';

beforeEach(() => vi.spyOn(window, 'scrollTo').mockImplementation(() => {}));
afterEach(() => {
  cleanup();
  window.history.replaceState(null, '', '/');
});

describe('router base', () => {
  it('mounts the app under /demo-app', () => {
    expect(baseOf('/demo-app')).toBe(DEMO_BASE);
    expect(baseOf('/demo-app/metrics')).toBe(DEMO_BASE);
    expect(baseOf('/demo-apps')).toBe('');
    expect(baseOf('/machines')).toBe('');
    expect(appPath('/demo-app', DEMO_BASE)).toBe('/');
    expect(appPath('/demo-app/', DEMO_BASE)).toBe('/');
    expect(appPath('/demo-app/metrics', DEMO_BASE)).toBe('/metrics');
    expect(appPath('/metrics', '')).toBe('/metrics');
  });
});

function demoApi({ demoError } = {}) {
  let session = false;
  return {
    hasSession: () => session,
    onAuthLost: null,
    clearTokens: vi.fn(() => {
      session = false;
    }),
    demoSession: vi.fn(async () => {
      if (demoError) throw demoError;
      session = true;
      return { access_token: 'a', refresh_token: 'r', demo: true };
    }),
    logout: vi.fn(async () => {
      session = false;
    }),
    get: vi.fn(async (path) => {
      if (path === '/api/v1/auth/me') return { user: { id: 'usr_d', email: 'demo-x@demo.dumont.invalid', role: 'user' } };
      if (path === '/api/v1/instances') return { instances: [] };
      throw new Error('unexpected GET ' + path);
    }),
  };
}

describe('demo console (/demo-app/*)', () => {
  it('starts a demo session without login, shows the DEMO badge and keeps links under /demo-app', async () => {
    window.history.replaceState(null, '', '/demo-app/machines');
    const api = demoApi();
    render(<App api={api} base={DEMO_BASE} />);
    expect(await screen.findByRole('heading', { name: 'Machines', level: 1 })).toBeTruthy();
    expect(api.demoSession).toHaveBeenCalledTimes(1);
    expect(screen.getByTestId('demo-badge').textContent).toBe('DEMO');
    const nav = within(screen.getByRole('navigation', { name: 'Main' }));
    expect(nav.getByRole('link', { name: 'Metrics' }).getAttribute('href')).toBe('/demo-app/metrics');
    expect(nav.getByRole('link', { name: 'Dashboard' }).getAttribute('href')).toBe('/demo-app/');
    expect(screen.queryByText('demo-x@demo.dumont.invalid')).toBeNull();
    await waitFor(() => expect(document.title).toBe('Machines · Dumont Cloud demo'));

    const user = userEvent.setup();
    await user.click(screen.getByRole('button', { name: 'End demo' }));
    expect(api.logout).toHaveBeenCalled();
    expect(await screen.findByRole('heading', { name: 'Your demo session has ended' })).toBeTruthy();
    await user.click(screen.getByRole('button', { name: 'Start a new demo' }));
    expect(await screen.findByRole('heading', { name: 'Machines', level: 1 })).toBeTruthy();
    expect(api.demoSession).toHaveBeenCalledTimes(2);
  });

  it('says so when the server has demo mode off', async () => {
    window.history.replaceState(null, '', '/demo-app/');
    const api = demoApi({ demoError: new ApiError(404, 'not_found', 'demo mode is not enabled on this server (set demo.enabled = true)') });
    render(<App api={api} base={DEMO_BASE} />);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/Cannot start the demo: demo mode is not enabled/);
    expect(screen.getByRole('link', { name: 'Log in or sign up instead' }).getAttribute('href')).toBe('/login');
  });
});

describe('console (/)', () => {
  it('sends visitors without a session to the login page', async () => {
    window.history.replaceState(null, '', '/metrics');
    const api = { hasSession: () => false, onAuthLost: null, get: vi.fn() };
    render(<App api={api} />);
    expect(await screen.findByRole('heading', { name: 'Log in to Dumont Cloud' })).toBeTruthy();
    await waitFor(() => expect(window.location.pathname).toBe('/login'));
    expect(api.get).not.toHaveBeenCalled();
  });
});
