import { cleanup, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AuthProvider, useAuth } from '../auth.jsx';
import { filterReliability, offersPath } from '../components/Offers.jsx';
import { Router } from '../router.jsx';
import { DashboardPage, fleetCards, savedThisMonth } from './Dashboard.jsx';

beforeEach(() => {
  vi.spyOn(window, 'scrollTo').mockImplementation(() => {}); // jsdom has no scrolling
  Element.prototype.scrollIntoView = () => {};
  localStorage.clear();
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
  { id: 'v-78', provider: 'vast', gpu_name: 'RTX 4090', num_gpus: 1, gpu_ram_gb: 24, cpu_cores: 8, ram_gb: 32,
    price_per_hour: 0.4, reliability: 0.81, location: 'US', blacklisted: false, history: null },
];
const NOW = Date.now();
const INSTANCES = [
  { id: 'ins_1', name: 'a', state: 'running', machine: { price_per_hour: 0.5 } },
  { id: 'ins_2', name: 'b', state: 'running', machine: { price_per_hour: 1.25 } },
  { id: 'ins_3', name: 'c', state: 'hibernated', machine: { price_per_hour: 2 } },
];

const enc = new TextEncoder();
const frame = (seq, type, data) => `id: ${seq}\nevent: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
function streamOf(chunks) {
  let i = 0;
  return {
    ok: true,
    status: 200,
    body: { getReader: () => ({ read: async () => (i < chunks.length ? { value: enc.encode(chunks[i++]), done: false } : { done: true }), cancel: async () => {} }) },
  };
}
const RACE = [
  frame(1, 'deploy_started', { provider: 'local', offers: 1, blacklisted: 0, reason: 'create' }),
  frame(2, 'batch_started', { batch: 1, offers: [{ id: 'local-1' }] }),
  frame(3, 'machine_created', { label: 'dc-ins_9-1', machine_id: 'dc-ins_9-1', batch: 1, offer: { id: 'local-1', gpu: 'virtual', price_per_hour: 2.5 } }),
  frame(4, 'machine_state', { label: 'dc-ins_9-1', machine_id: 'dc-ins_9-1', state: 'running', reachable: true }),
  frame(5, 'deploy_succeeded', {
    winner: { label: 'dc-ins_9-1', machine_id: 'dc-ins_9-1', offer: { id: 'local-1', price_per_hour: 2.5 } },
    time_to_ready_s: 3.25, machines_started: 1, loser_cost_usd: 0, total_cost_usd: 0.001,
  }),
];

function fakeApi(role, { offersError } = {}) {
  const get = vi.fn(async (path) => {
    if (path === '/api/v1/auth/me') return { user: { id: 'usr_1', email: 'me@example.com', role } };
    if (path.startsWith('/api/v1/instances/offers')) {
      if (offersError) throw offersError;
      return { offers: OFFERS, count: OFFERS.length, provider_errors: [] };
    }
    if (path === '/api/v1/instances') return { instances: INSTANCES };
    if (path === '/api/v1/metrics/savings/real') return { total_dollars: 12.5, total_hours: 5, hibernations: 2, per_instance: [] };
    if (path === '/api/v1/metrics/hibernation/events') {
      return { events: [{ id: 'h1', instance_id: 'ins_3', price_per_hour: 2, started_at: NOW / 1000 - 3600, ended_at: null, hours: 0, dollars: 0 }] };
    }
    if (path === '/api/v1/deploys?limit=5') return { deploys: [] };
    if (path === '/api/v1/deploys/dep_9') {
      return { deploy: { id: 'dep_9', state: 'succeeded', winner_machine_id: 'dc-ins_9-1', loser_cost_usd: 0, machines: [] } };
    }
    throw new Error('unexpected GET ' + path);
  });
  return {
    hasSession: () => true,
    onAuthLost: null,
    get,
    post: vi.fn(async () => ({ deploy: { id: 'dep_9', instance_id: 'ins_9', state: 'pending', created_ms: NOW } })),
    stream: vi.fn(async () => streamOf(RACE)),
    del: vi.fn(),
  };
}

function Ready({ children }) {
  const auth = useAuth();
  return auth.status === 'ready' ? children : null;
}

async function renderDashboard(role = 'user', opts) {
  const api = fakeApi(role, opts);
  render(
    <Router>
      <AuthProvider api={api}>
        <Ready>
          <DashboardPage />
        </Ready>
      </AuthProvider>
    </Router>,
  );
  if (!opts) await screen.findAllByTestId('offer-row');
  return api;
}

const offerCalls = (api) => api.get.mock.calls.map((c) => c[0]).filter((p) => p.startsWith('/api/v1/instances/offers'));

describe('offers helpers', () => {
  it('offersPath leaves out empty filters and encodes the rest', () => {
    expect(offersPath({ gpu: '', sort: 'price' })).toBe('/api/v1/instances/offers?sort=price');
    expect(offersPath({ gpu: ' RTX 4090 ', min_vram: '24', max_price: '', region: 'EU&US', sort: 'value', min_reliability: '90' })).toBe(
      '/api/v1/instances/offers?gpu=RTX+4090&min_vram=24&region=EU%26US&sort=value',
    );
  });
  it('filterReliability keeps offers at or above the percentage', () => {
    expect(filterReliability(OFFERS, '90').map((o) => o.id)).toEqual(['local-1', 'v-77']);
    expect(filterReliability(OFFERS, '')).toHaveLength(3);
  });
});

describe('dashboard cards', () => {
  it('counts running and hibernated machines and sums what the running ones cost', () => {
    expect(fleetCards(INSTANCES)).toMatchObject({ running: 2, hibernated: 1, spendPerHour: 1.75 });
  });
  it('books only the part of each hibernation inside this month', () => {
    const now = Date.UTC(2026, 4, 1, 12) ; // 1 May, 12:00 UTC
    const monthStart = Date.UTC(2026, 4, 1) / 1000;
    const events = [
      { started_at: monthStart - 7200, ended_at: monthStart + 3600, price_per_hour: 2 }, // 1 h in May
      { started_at: monthStart + 7200, ended_at: null, price_per_hour: 1 }, // open: 10 h so far
      { started_at: monthStart - 9000, ended_at: monthStart - 3600, price_per_hour: 5 }, // April only
    ];
    expect(savedThisMonth(events, now)).toBeCloseTo(2 + 10, 6);
  });
});

describe('DashboardPage', () => {
  it('shows the cards: running, hibernated, spend per hour now, saved this month', async () => {
    await renderDashboard();
    await waitFor(() => expect(screen.getByTestId('card-running').textContent).toBe('2'));
    expect(screen.getByTestId('card-hibernated').textContent).toBe('1');
    expect(screen.getByTestId('card-spend').textContent).toBe('$1.75/h');
    await waitFor(() => expect(screen.getByTestId('card-saved').textContent).toMatch(/^\$\d/));
  });

  it('builds the offers query from the labelled filters and filters reliability here', async () => {
    const api = await renderDashboard();
    expect(offerCalls(api)).toEqual(['/api/v1/instances/offers?sort=price']);
    const user = userEvent.setup();
    const form = screen.getByRole('form', { name: 'Filter offers' });
    await user.type(within(form).getByLabelText('GPU'), '4090');
    await user.type(within(form).getByLabelText('Min VRAM (GB)'), '24');
    await user.type(within(form).getByLabelText('Max price ($/h)'), '1.5');
    await user.type(within(form).getByLabelText('Region'), 'EU');
    await user.selectOptions(within(form).getByLabelText('Provider'), 'vast');
    await user.selectOptions(within(form).getByLabelText('Sort by'), 'reliability');
    await user.type(within(form).getByLabelText('Min reliability (%)'), '90');
    await user.click(within(form).getByRole('button', { name: 'Search' }));
    await waitFor(() => expect(offerCalls(api)).toHaveLength(2));
    expect(offerCalls(api)[1]).toBe('/api/v1/instances/offers?gpu=4090&min_vram=24&max_price=1.5&region=EU&provider=vast&sort=reliability');
    await waitFor(() => expect(screen.getAllByTestId('offer-row').map((r) => r.dataset.offerId)).toEqual(['local-1', 'v-77']));
    expect(screen.getByTestId('offer-count').textContent).toMatch(/2 offer\(s\) \(1 below the reliability filter\)/);
  });

  it('refuses a bad filter with a message next to the field', async () => {
    const api = await renderDashboard();
    const user = userEvent.setup();
    const form = screen.getByRole('form', { name: 'Filter offers' });
    await user.type(within(form).getByLabelText('Min reliability (%)'), '150');
    await user.click(within(form).getByRole('button', { name: 'Search' }));
    expect((await within(form).findByRole('alert')).textContent).toMatch(/Min reliability/);
    expect(within(form).getByLabelText('Min reliability (%)').getAttribute('aria-invalid')).toBe('true');
    expect(offerCalls(api)).toHaveLength(1);
  });

  it('deploys an offer through the wizard and shows the race live', async () => {
    const api = await renderDashboard('user');
    const user = userEvent.setup();
    const vast = screen.getAllByTestId('offer-row').find((r) => r.dataset.offerId === 'v-77');
    expect(within(vast).getByTestId('blacklisted')).toBeTruthy();
    expect(within(vast).getByRole('button', { name: 'Deploy vast v-77' }).disabled).toBe(true);
    await user.click(screen.getByRole('button', { name: 'Deploy local local-1' }));
    const wizard = screen.getByRole('form', { name: 'Deploy a machine' });
    expect(within(wizard).getByLabelText('Name').value).toBe('local-gpu-local-1');
    expect(within(wizard).getByLabelText('Provider').value).toBe('local');
    for (let i = 0; i < 4; i++) await user.click(within(wizard).getByRole('button', { name: 'Next' }));
    expect(await within(wizard).findByTestId('candidates')).toBeTruthy();
    await user.click(within(wizard).getByRole('button', { name: 'Deploy' }));
    expect(api.post).toHaveBeenCalledWith('/api/v1/deploys', {
      name: 'local-gpu-local-1',
      provider: 'local',
      offer_id: 'local-1',
      strategy: { batch_size: 5, max_batches: 3, batch_timeout_s: 90 },
      hibernation: { enabled: true, gpu_threshold_pct: 5, idle_seconds: 180, release_after_seconds: 1800 },
    });
    const progress = await screen.findByRole('region', { name: /Deploying local-gpu-local-1/ });
    await waitFor(() => expect(progress.dataset.phase).toBe('succeeded'));
    expect(api.stream).toHaveBeenCalledWith('/api/v1/deploys/dep_9/events', expect.anything());
    const row = within(progress).getByTestId('race-row');
    expect(row.dataset.winner).toBe('true');
    expect(within(row).getByText('winner')).toBeTruthy();
    expect(within(progress).getByTestId('winner').textContent).toBe('local-1');
    expect(within(progress).getByTestId('time-to-ready').textContent).toBe('3.3 s');
    expect(within(progress).getByTestId('loser-cost').textContent).toBe('$0.0000');
    expect(within(progress).getAllByTestId('deploy-event')).toHaveLength(5);
    await waitFor(() => expect(api.get).toHaveBeenCalledWith('/api/v1/deploys/dep_9'));
  });

  it('hides every deploy control from readonly users', async () => {
    await renderDashboard('readonly');
    expect(screen.getAllByTestId('offer-row')).toHaveLength(3);
    expect(screen.queryByRole('button', { name: /Deploy/ })).toBeNull();
  });

  it('shows the error when offers cannot be loaded', async () => {
    await renderDashboard('user', { offersError: new Error('provider down') });
    expect((await screen.findByText(/provider down/)).textContent).toMatch(/Cannot load offers/);
  });
});
