import { cleanup, render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AuthProvider, useAuth } from '../auth.jsx';
import { Router } from '../router.jsx';
import { marketPath, MetricsPage, priceSeries } from './Metrics.jsx';

// jsdom has no canvas: the charts render their props instead.
vi.mock('../components/Charts.jsx', () => ({
  TimeLineChart: ({ series, label }) => <div data-testid="line-chart" data-series={series.length} aria-label={label} />,
  BarChart: ({ labels, label }) => <div data-testid="bar-chart" data-labels={labels.join(',')} aria-label={label} />,
}));

afterEach(cleanup);

const SUMMARY = {
  gpus: [
    { gpu: 'H100 SXM', vram_gb: 80, min_price: 2, avg_price: 2.3, max_price: 3, offers: 3, available_gpus: 5, avg_reliability: 0.97,
      change_24h: { since: 1, min_price: 0.1, avg_price: 0.05, avg_price_pct: 2.2 }, providers: [{ provider: 'vast', sampled_at: 1700000000 }] },
    { gpu: 'RTX 4090', vram_gb: 24, min_price: 0.3, avg_price: 0.4, max_price: 0.6, offers: 12, available_gpus: 20, avg_reliability: 0.95,
      change_24h: null, providers: [{ provider: 'runpod', sampled_at: 1700000000 }, { provider: 'vast', sampled_at: 1700000000 }] },
  ],
};
const HISTORY = {
  series: [
    { provider: 'vast', gpu: 'RTX 4090', points: [{ t: 1, avg_price: 0.4, min_price: 0.3, spot_min_price: null }, { t: 2, avg_price: 0.42, min_price: 0.31, spot_min_price: 0.15 }] },
    { provider: 'runpod', gpu: 'RTX 4090', points: [{ t: 1, avg_price: 0.7, min_price: 0.69, spot_min_price: null }] },
  ],
  truncated: false,
};

function fakeApi(role, { failSpot = false } = {}) {
  const get = vi.fn(async (path) => {
    if (path === '/api/v1/auth/me') return { user: { id: 'usr_1', email: 'me@example.com', role } };
    if (path === '/api/v1/metrics/market/summary') return SUMMARY;
    if (path.startsWith('/api/v1/metrics/market?')) return HISTORY;
    if (path === '/api/v1/metrics/spot/monitor') {
      if (failSpot) throw new Error('database away');
      return { gpus: [{ gpu: 'RTX 4090', on_demand: { price: 0.3, provider: 'vast' }, spot: { price: 0.12, provider: 'vast' }, spot_discount_pct: 60 },
        { gpu: 'H100 SXM', on_demand: { price: 2, provider: 'vast' }, spot: null, spot_discount_pct: null }] };
    }
    if (path === '/api/v1/metrics/spot/savings') return { hours_per_month: 730, gpus: [{ gpu: 'RTX 4090', savings_per_month: 131.4 }] };
    if (path.startsWith('/api/v1/metrics/spot/availability')) {
      return { gpus: [{ gpu: 'RTX 4090', offers: 12, available_gpus: 20, change: { offers: 1, available_gpus: 2 }, trend: 'rising', series: [{ t: 1, available_gpus: 18 }, { t: 2, available_gpus: 20 }] }] };
    }
    if (path === '/api/v1/metrics/spot/reliability') {
      return { rows: [{ provider: 'vast', gpu: 'RTX 4090', provider_reliability: 0.95, offers: 8, history: { hosts: 2, attempts: 5, ready: 4, failed: 1, success_rate: 0.8 } }], provider_errors: [{ provider: 'runpod', error: 'timeout' }] };
    }
    if (path === '/api/v1/metrics/spot/llm-gpus') {
      return { rule: { overhead: 1.2 }, gpus: [{ gpu: 'RTX 4090', vram_gb: 24, price: 0.3, provider: 'vast', price_per_gb_vram: 0.0125, spot_price: 0.12, fits: { fp16: ['7B'], '4bit': ['7B', '13B', '34B'] } }] };
    }
    if (path === '/api/v1/machines/history/summary') return { providers: { local: { attempts: 2, ready: 2, failed: 0, success_rate: 1, avg_time_to_ready_s: 3 } }, attempts: 2, blacklisted: 1 };
    if (path === '/api/v1/machines/history/blacklist') return { blacklist: [{ provider: 'vast', machine_id: 'v-77', reason: 'flaky', automatic: false, created_at: 1700000000 }] };
    if (path.startsWith('/api/v1/machines/history/')) return { machines: [] };
    throw new Error('unexpected GET ' + path);
  });
  return { hasSession: () => true, onAuthLost: null, get, post: vi.fn(async () => ({})), del: vi.fn(async () => ({ removed: true })) };
}

function Ready({ children }) {
  const auth = useAuth();
  return auth.status === 'ready' ? children : null;
}

async function renderMetrics(role = 'user', opts) {
  const api = fakeApi(role, opts);
  render(
    <Router>
      <AuthProvider api={api}>
        <Ready>
          <MetricsPage />
        </Ready>
      </AuthProvider>
    </Router>,
  );
  await screen.findAllByTestId('market-row');
  return api;
}

const historyCalls = (api) => api.get.mock.calls.map((c) => c[0]).filter((p) => p.startsWith('/api/v1/metrics/market?'));

describe('metrics helpers', () => {
  it('marketPath and priceSeries', () => {
    expect(marketPath({ gpu: 'RTX 4090', provider: '', hours: 24 })).toBe('/api/v1/metrics/market?gpu=RTX+4090&hours=24');
    expect(priceSeries(HISTORY, 'spot_min_price')).toEqual([
      { label: 'RTX 4090 · vast', points: [{ t: 2, y: 0.15 }] },
      { label: 'RTX 4090 · runpod', points: [] },
    ]);
  });
});

describe('MetricsPage', () => {
  it('charts the busiest GPU model first and follows the filters', async () => {
    const api = await renderMetrics();
    await waitFor(() => expect(historyCalls(api)).toEqual(['/api/v1/metrics/market?gpu=RTX+4090&hours=48']));
    expect((await screen.findByTestId('line-chart')).dataset.series).toBe('2');
    expect(screen.getByTestId('history-points').textContent).toMatch(/2 series, 3 samples/);
    const user = userEvent.setup();
    await user.selectOptions(screen.getByLabelText('Provider', { selector: 'select' }), 'vast');
    await user.selectOptions(screen.getByLabelText('Window'), '168');
    await waitFor(() => expect(historyCalls(api).at(-1)).toBe('/api/v1/metrics/market?gpu=RTX+4090&provider=vast&hours=168'));
    await user.click(screen.getByRole('button', { name: 'Chart H100 SXM prices' }));
    await waitFor(() => expect(historyCalls(api).at(-1)).toBe('/api/v1/metrics/market?gpu=H100+SXM&provider=vast&hours=168'));
  });

  it('shows the market now, spot, availability, reliability and LLM sections', async () => {
    await renderMetrics();
    const h100 = screen.getAllByTestId('market-row').find((r) => r.textContent.includes('H100 SXM'));
    expect(h100.textContent).toMatch(/▲ \+2\.2 %/);
    expect(await screen.findByTestId('bar-chart')).toHaveProperty('dataset.labels', 'RTX 4090');
    const spot = await screen.findAllByTestId('spot-row');
    expect(spot[0].textContent).toMatch(/60 %.*\$131\.40 per GPU/);
    expect(spot[1].textContent).toMatch(/no spot offer/);
    expect((await screen.findByTestId('availability-row')).textContent).toMatch(/\+2 GPUs.*rising/);
    expect((await screen.findByTestId('reliability-row')).textContent).toMatch(/95 %.*5 on 2 host\(s\).*80 %/);
    expect(screen.getByText(/Some providers did not answer: runpod: timeout/)).toBeTruthy();
    expect((await screen.findByTestId('llm-row')).textContent).toMatch(/7B, 13B, 34B/);
  });

  it('keeps the other sections when one fails, with a retry', async () => {
    await renderMetrics('user', { failSpot: true });
    const alert = await screen.findByText(/Cannot load spot prices/);
    expect(alert.closest('[role="alert"]').textContent).toMatch(/database away/);
    expect(within(alert.closest('[role="alert"]')).getByRole('button', { name: 'Retry' })).toBeTruthy();
    expect(await screen.findByTestId('llm-row')).toBeTruthy();
  });

  it('lets an admin remove and add blacklist entries; a user only reads it', async () => {
    const api = await renderMetrics('admin');
    const user = userEvent.setup();
    await user.click(await screen.findByRole('button', { name: 'Remove vast v-77 from the blacklist' }));
    expect(api.del).toHaveBeenCalledWith('/api/v1/machines/history/blacklist/vast/v-77');
    const form = screen.getByRole('form', { name: 'Blacklist a host' });
    await user.type(within(form).getByLabelText('Provider'), 'vast');
    await user.type(within(form).getByLabelText('Machine id'), 'v 9');
    await user.type(within(form).getByLabelText('Reason'), 'slow');
    await user.click(within(form).getByRole('button', { name: 'Add to blacklist' }));
    expect(api.post).toHaveBeenCalledWith('/api/v1/machines/history/blacklist/vast/v%209', { reason: 'slow' });
    cleanup();
    await renderMetrics('user');
    await screen.findByTestId('blacklist-row');
    expect(screen.queryByRole('button', { name: /Remove/ })).toBeNull();
    expect(screen.queryByRole('form', { name: 'Blacklist a host' })).toBeNull();
  });
});
