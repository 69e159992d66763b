import { cleanup, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AuthProvider, useAuth } from '../auth.jsx';
import { Router } from '../router.jsx';
import { MarketPage, offersPath } from './Market.jsx';

beforeEach(() => {
  vi.spyOn(window, 'scrollTo').mockImplementation(() => {}); // jsdom has no scrolling
});

afterEach(() => {
  cleanup();
  window.history.replaceState(null, '', '/');
});

const OFFERS = [
  { id: 'local-1', provider: 'local', gpu_name: 'Local GPU', num_gpus: 1, gpu_ram_gb: 24, cpu_cores: 8, ram_gb: 32,
    price_per_hour: 2.5, reliability: 1, location: 'here', blacklisted: false, history: { attempts: 2, success_rate: 1 } },
  { id: 'v-77', provider: 'vast', gpu_name: 'RTX 4090', num_gpus: 2, gpu_ram_gb: 24, cpu_cores: 16, ram_gb: 64,
    price_per_hour: 0.8, reliability: 0.93, location: 'EU-West', blacklisted: true, history: null },
];

function fakeApi(role) {
  const get = vi.fn(async (path) => {
    if (path === '/api/v1/auth/me') return { user: { id: 'usr_1', email: 'me@example.com', role } };
    if (path.startsWith('/api/v1/instances/offers')) return { offers: OFFERS, count: OFFERS.length, provider_errors: [] };
    if (path === '/api/v1/machines/history/summary') {
      return { providers: { local: { attempts: 2, ready: 2, failed: 0, success_rate: 1, avg_time_to_ready_s: 3 } }, attempts: 2, blacklisted: 1 };
    }
    if (path === '/api/v1/machines/history/blacklist') {
      return { blacklist: [{ provider: 'vast', machine_id: 'v-77', reason: 'flaky', automatic: false, created_at: 1700000000 }] };
    }
    if (path.startsWith('/api/v1/machines/history/')) return { machines: [] };
    throw new Error('unexpected GET ' + path);
  });
  return {
    hasSession: () => true,
    onAuthLost: null,
    get,
    post: vi.fn(async () => ({ instance: { id: 'ins_1' } })),
    del: vi.fn(async () => ({ removed: true })),
  };
}

function Ready({ children }) {
  const auth = useAuth();
  return auth.status === 'ready' ? children : null;
}

async function renderMarket(role = 'user') {
  const api = fakeApi(role);
  render(
    <Router>
      <AuthProvider api={api}>
        <Ready>
          <MarketPage />
        </Ready>
      </AuthProvider>
    </Router>,
  );
  await screen.findAllByTestId('offer-row');
  return api;
}

const offerCalls = (api) => api.get.mock.calls.map((c) => c[0]).filter((p) => p.startsWith('/api/v1/instances/offers'));

describe('offersPath', () => {
  it('leaves out empty filters and encodes the rest', () => {
    expect(offersPath({ gpu: '', sort: 'price' })).toBe('/api/v1/instances/offers?sort=price');
    expect(offersPath({ gpu: ' RTX 4090 ', min_vram: '24', max_price: '', region: 'EU&US', sort: 'value' })).toBe(
      '/api/v1/instances/offers?gpu=RTX+4090&min_vram=24&region=EU%26US&sort=value',
    );
  });
});

describe('MarketPage', () => {
  it('builds the offers query from the labelled filters', async () => {
    const api = await renderMarket();
    expect(offerCalls(api)).toEqual(['/api/v1/instances/offers?sort=price']);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('GPU'), '4090');
    await user.type(screen.getByLabelText('Min VRAM (GB)'), '24');
    await user.type(screen.getByLabelText('Max price ($/h)'), '1.5');
    await user.type(screen.getByLabelText('Region'), 'EU');
    await user.type(screen.getByLabelText('Provider'), 'vast');
    await user.selectOptions(screen.getByLabelText('Sort by'), 'reliability');
    await user.click(screen.getByRole('button', { name: 'Search' }));
    await waitFor(() => expect(offerCalls(api)).toHaveLength(2));
    expect(offerCalls(api)[1]).toBe(
      '/api/v1/instances/offers?gpu=4090&min_vram=24&max_price=1.5&region=EU&provider=vast&sort=reliability',
    );
  });

  it('badges blacklisted offers and deploys an offer, then goes to Machines', async () => {
    const api = await renderMarket('user');
    const rows = screen.getAllByTestId('offer-row');
    const local = rows.find((r) => r.dataset.offerId === 'local-1');
    const vast = rows.find((r) => r.dataset.offerId === 'v-77');
    expect(within(vast).getByTestId('blacklisted').textContent).toBe('blacklisted');
    expect(within(local).queryByTestId('blacklisted')).toBeNull();
    window.history.replaceState(null, '', '/market');
    await userEvent.setup().click(within(local).getByRole('button', { name: 'Deploy local local-1' }));
    await waitFor(() => expect(window.location.pathname).toBe('/'));
    expect(api.post).toHaveBeenCalledWith('/api/v1/instances', { name: 'local-gpu-local-1', provider: 'local', offer_id: 'local-1' });
    // a plain user sees the blacklist but cannot edit it
    await screen.findByTestId('blacklist-row');
    expect(screen.queryByRole('button', { name: /Remove/ })).toBeNull();
    expect(screen.queryByRole('button', { name: 'Add to blacklist' })).toBeNull();
  });

  it('hides Deploy from readonly users', async () => {
    await renderMarket('readonly');
    expect(screen.getAllByTestId('offer-row')).toHaveLength(2);
    expect(screen.queryByRole('button', { name: /Deploy/ })).toBeNull();
  });

  it('lets an admin remove and add blacklist entries', async () => {
    const api = await renderMarket('admin');
    const user = userEvent.setup();
    await user.click(await screen.findByRole('button', { name: 'Remove vast v-77 from the blacklist' }));
    expect(api.del).toHaveBeenCalledWith('/api/v1/machines/history/blacklist/vast/v-77');
    const form = screen.getByRole('form', { name: 'Blacklist a host' });
    await user.type(within(form).getByLabelText('Provider'), 'vast');
    await user.type(within(form).getByLabelText('Machine id'), 'v 9');
    await user.type(within(form).getByLabelText('Reason'), 'slow');
    await user.click(within(form).getByRole('button', { name: 'Add to blacklist' }));
    expect(api.post).toHaveBeenCalledWith('/api/v1/machines/history/blacklist/vast/v%209', { reason: 'slow' });
  });

  it('shows the error when offers cannot be loaded', async () => {
    const api = fakeApi('user');
    const get = api.get;
    api.get = vi.fn((p) => (p.startsWith('/api/v1/instances/offers') ? Promise.reject(new Error('provider down')) : get(p)));
    render(
      <Router>
        <AuthProvider api={api}>
          <Ready>
            <MarketPage />
          </Ready>
        </AuthProvider>
      </Router>,
    );
    expect((await screen.findByText(/provider down/)).textContent).toMatch(/Cannot load offers/);
  });
});
