import { cleanup, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AuthProvider, useAuth } from '../auth.jsx';
import { HIBERNATION_KEY } from '../prefs.js';
import { Router } from '../router.jsx';
import { SettingsPage } from './Settings.jsx';

beforeEach(() => localStorage.clear());
afterEach(cleanup);

function fakeApi(role) {
  let vast = { provider: 'vast', title: 'Vast.ai', fields: [{ name: 'api_key', required: true }], configured: false, server_default: false };
  const gce = { provider: 'gce', title: 'Google Cloud', fields: [{ name: 'service_account_json', required: true }, { name: 'zone', required: false }], configured: true, hint: 'saved', updated_at: 1700000000, server_default: false };
  return {
    hasSession: () => true,
    onAuthLost: null,
    get: vi.fn(async (path) => {
      if (path === '/api/v1/auth/me') return { user: { id: 'usr_1', email: 'me@example.com', role } };
      if (path === '/api/v1/settings/providers') return { providers: [gce, vast] };
      if (path === '/api/v1/auth/api-keys') return { api_keys: [] };
      throw new Error('unexpected GET ' + path);
    }),
    put: vi.fn(async (path, body) => {
      vast = { ...vast, configured: true, hint: '...' + body.api_key.slice(-4), updated_at: 1700000000 };
      return { provider: 'vast', configured: true, hint: vast.hint };
    }),
    del: vi.fn(async () => ({ configured: false })),
    post: vi.fn(),
  };
}

function Ready({ children }) {
  const auth = useAuth();
  return auth.status === 'ready' ? children : null;
}

async function renderSettings(role = 'user') {
  const api = fakeApi(role);
  render(
    <Router>
      <AuthProvider api={api}>
        <Ready>
          <SettingsPage />
        </Ready>
      </AuthProvider>
    </Router>,
  );
  await screen.findAllByTestId('provider-credential');
  return api;
}
const card = (p) => screen.getAllByTestId('provider-credential').find((e) => e.dataset.provider === p);

describe('provider credentials', () => {
  it('are write-only: saved with PUT, the field emptied, only the hint shown', async () => {
    const api = await renderSettings();
    const user = userEvent.setup();
    const vast = card('vast');
    expect(within(vast).getByTestId('credential-status').textContent).toMatch(/not set/);
    const input = within(vast).getByLabelText('API key');
    expect(input.type).toBe('password');
    await user.click(within(vast).getByRole('button', { name: 'Save Vast.ai credentials' }));
    expect(within(vast).getByRole('alert').textContent).toMatch(/API key is required/);
    expect(api.put).not.toHaveBeenCalled();
    await user.type(input, 'sk-very-secret-123456');
    await user.click(within(vast).getByRole('button', { name: 'Save Vast.ai credentials' }));
    expect(api.put).toHaveBeenCalledWith('/api/v1/settings/providers/vast', { api_key: 'sk-very-secret-123456' });
    await waitFor(() => expect(within(card('vast')).getByTestId('credential-status').textContent).toMatch(/saved.*\.\.\.3456/));
    expect(within(card('vast')).getByLabelText('API key').value).toBe('');
    expect(document.body.textContent).not.toContain('sk-very-secret');
  });

  it('a saved credential shows its hint, never a value, and can be forgotten after confirming', async () => {
    const api = await renderSettings();
    const user = userEvent.setup();
    const gce = card('gce');
    expect(within(gce).getByLabelText('Service-account key (JSON)').value).toBe('');
    expect(within(gce).getByLabelText('Service-account key (JSON)').placeholder).toMatch(/saved/);
    expect(within(gce).getByLabelText('Zone (optional)')).toBeTruthy();
    await user.click(within(gce).getByRole('button', { name: 'Forget Google Cloud credentials' }));
    expect(api.del).not.toHaveBeenCalled();
    await user.click(within(gce).getByRole('button', { name: 'Confirm forgetting Google Cloud credentials' }));
    expect(api.del).toHaveBeenCalledWith('/api/v1/settings/providers/gce');
  });

  it('readonly users see the status and no form', async () => {
    await renderSettings('readonly');
    expect(within(card('vast')).getByTestId('credential-status')).toBeTruthy();
    expect(screen.queryByLabelText('API key')).toBeNull();
    expect(screen.queryByRole('button', { name: /credentials$/ })).toBeNull();
  });
});

describe('hibernation defaults', () => {
  it('are saved in this browser, checked first, and can go back to the server defaults', async () => {
    await renderSettings();
    const user = userEvent.setup();
    const form = screen.getByRole('form', { name: 'Hibernation defaults' });
    expect(form.textContent).toMatch(/Stored in this browser only/);
    const idle = within(form).getByLabelText('Hibernate after idle (seconds)');
    await user.clear(idle);
    await user.type(idle, '0');
    await user.click(within(form).getByRole('button', { name: 'Save defaults' }));
    expect(within(form).getByRole('alert').textContent).toMatch(/Idle time/);
    expect(idle.getAttribute('aria-invalid')).toBe('true');
    expect(localStorage.getItem(HIBERNATION_KEY)).toBeNull();
    await user.clear(idle);
    await user.type(idle, '600');
    await user.click(within(form).getByRole('button', { name: 'Save defaults' }));
    expect(JSON.parse(localStorage.getItem(HIBERNATION_KEY))).toMatchObject({ idle_seconds: 600, gpu_threshold_pct: 5 });
    await user.click(within(form).getByRole('button', { name: 'Use server defaults' }));
    expect(localStorage.getItem(HIBERNATION_KEY)).toBeNull();
    expect(idle.value).toBe('180');
  });
});
