import { cleanup, render, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DeployProgress } from './DeployProgress.jsx';

afterEach(cleanup);

const offer = (id, price) => ({ id, gpu: 'RTX 4090', price_per_hour: price });
const EVENTS = [
  { seq: 1, type: 'deploy_started', data: { provider: 'sim', offers: 8, blacklisted: 1 } },
  { seq: 2, type: 'batch_started', data: { batch: 1, offers: [offer('sim-0', 0.5), offer('sim-1', 0.55)] } },
  { seq: 3, type: 'machine_created', data: { label: 'dc-i-1', machine_id: 'sim-m1', batch: 1, offer: offer('sim-0', 0.5) } },
  { seq: 4, type: 'machine_failed', data: { label: 'dc-i-2', offer: offer('sim-1', 0.55), error: 'out of stock' } },
  { seq: 5, type: 'machine_state', data: { label: 'dc-i-1', machine_id: 'sim-m1', state: 'running', reachable: false } },
  { seq: 6, type: 'machine_destroyed', data: { label: 'dc-i-1', machine_id: 'sim-m1', offer_id: 'sim-0', reason: 'batch_timeout', billed_seconds: 11, cost_usd: 0.0015 } },
  { seq: 7, type: 'deploy_failed', data: { reason: 'no machine became ready in 1 batch', machines_started: 2, total_cost_usd: 0.0015 } },
];

describe('DeployProgress', () => {
  it('polls ?format=json when the stream is unavailable and shows a failed race', async () => {
    const api = {
      stream: vi.fn(async () => Promise.reject(Object.assign(new Error('cannot reach the server'), { status: 0 }))),
      get: vi.fn(async (path) => {
        if (path.includes('format=json')) return { events: EVENTS, state: 'failed' };
        return { deploy: { id: 'dep_1', state: 'failed', message: 'no machine became ready in 1 batch', machines: [] } };
      }),
    };
    render(<DeployProgress api={api} deploy={{ id: 'dep_1', state: 'pending', created_ms: Date.now() }} name="job" />);
    const section = screen.getByRole('region', { name: /Deploying job/ });
    await waitFor(() => expect(section.dataset.phase).toBe('failed'), { timeout: 5000 });
    expect(api.get.mock.calls[0][0]).toBe('/api/v1/deploys/dep_1/events?format=json&after=0');
    expect(within(section).getByTestId('deploy-failure').textContent).toMatch(/no machine became ready in 1 batch.*Retry/);
    const rows = within(section).getAllByTestId('race-row');
    expect(rows.map((r) => r.dataset.label)).toEqual(['dc-i-1', 'dc-i-2']);
    expect(rows[0].textContent).toMatch(/sim-0.*destroyed.*batch timed out, destroyed.*\$0\.0015/);
    expect(rows[1].textContent).toMatch(/could not be created/);
    expect(within(section).getAllByTestId('deploy-event').map((e) => e.dataset.type)).toEqual(EVENTS.map((e) => e.type));
  });
});
