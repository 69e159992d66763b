import { act, cleanup, render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from '../api.js';
import { InstanceCard } from './InstanceCard.jsx';

afterEach(cleanup);

const NOW = 1_800_000_000_000;
function instance(over = {}) {
  return {
    id: 'ins_1',
    name: 'trainer',
    provider: 'local',
    state: 'running',
    desired: 'running',
    message: '',
    state_since: NOW / 1000 - 125,
    hibernation: { enabled: true, gpu_threshold_pct: 5, idle_seconds: 180, release_after_seconds: 1800, released: false },
    machine: { id: 'dc-ins_1-1', attempt: 1, price_per_hour: 0.45, workspace: '/data/machines/dc-ins_1-1/workspace' },
    last_snapshot: null,
    created_at: NOW / 1000 - 300,
    telemetry: { last_heartbeat_ms: NOW - 1000, max_gpu_util: 37, gpu_count: 1, idle_since_ms: null },
    ...over,
  };
}
function fakeApi() {
  return {
    get: vi.fn().mockResolvedValue({ events: [], snapshots: [] }),
    post: vi.fn().mockResolvedValue({ instance: {} }),
    put: vi.fn().mockResolvedValue({ util: 0 }),
    del: vi.fn().mockResolvedValue({ instance: {} }),
  };
}

describe('InstanceCard', () => {
  it('shows name, state, GPU utilisation, price, uptime and the workspace', () => {
    render(<InstanceCard instance={instance()} history={[10, 37]} canMutate api={fakeApi()} nowMs={NOW} />);
    const card = screen.getByRole('article', { name: 'trainer' });
    expect(within(card).getByText('running')).toBeTruthy();
    expect(within(card).getByTestId('gpu-util').textContent).toBe('37 %');
    expect(within(card).getByRole('img', { name: /last 2 readings, latest 37 %/ })).toBeTruthy();
    expect(within(card).getByText('$0.45/h')).toBeTruthy();
    expect(within(card).getByText('2m 5s')).toBeTruthy();
    expect(within(card).getByText('/data/machines/dc-ins_1-1/workspace')).toBeTruthy();
  });

  it('runs the actions of a running machine', async () => {
    const api = fakeApi();
    const onChanged = vi.fn();
    render(<InstanceCard instance={instance()} canMutate api={api} onChanged={onChanged} nowMs={NOW} />);
    const user = userEvent.setup();
    const group = screen.getByRole('group', { name: 'Actions for trainer' });
    expect(within(group).getAllByRole('button').map((b) => b.textContent)).toEqual(['Pause', 'Hibernate', 'Snapshot now', 'Destroy']);
    await user.click(screen.getByRole('button', { name: 'Hibernate' }));
    expect(api.post).toHaveBeenCalledWith('/api/v1/instances/ins_1/hibernate');
    expect(onChanged).toHaveBeenCalledTimes(1);
    await user.click(screen.getByRole('button', { name: 'Snapshot now' }));
    expect(api.post).toHaveBeenLastCalledWith('/api/v1/instances/ins_1/snapshot');
  });

  it('offers Wake on a hibernated machine', async () => {
    const api = fakeApi();
    render(<InstanceCard instance={instance({ state: 'hibernated', telemetry: null, machine: { id: null, price_per_hour: 0.45 } })} canMutate api={api} nowMs={NOW} />);
    expect(screen.queryByRole('button', { name: 'Pause' })).toBeNull();
    await userEvent.setup().click(screen.getByRole('button', { name: 'Wake' }));
    expect(api.post).toHaveBeenCalledWith('/api/v1/instances/ins_1/wake');
    expect(screen.getByLabelText('Simulated GPU load').disabled).toBe(true);
    expect(screen.getByTestId('gpu-util').textContent).toBe('—');
  });

  it('asks before destroying', async () => {
    const api = fakeApi();
    render(<InstanceCard instance={instance()} canMutate api={api} nowMs={NOW} />);
    const user = userEvent.setup();
    await user.click(screen.getByRole('button', { name: 'Destroy' }));
    const dialog = screen.getByRole('alertdialog');
    expect(dialog.textContent).toMatch(/Destroy trainer\?/);
    await user.click(within(dialog).getByRole('button', { name: 'Cancel' }));
    expect(api.del).not.toHaveBeenCalled();
    expect(screen.queryByRole('alertdialog')).toBeNull();
    await user.click(screen.getByRole('button', { name: 'Destroy' }));
    await user.click(screen.getByRole('button', { name: 'Yes, destroy' }));
    expect(api.del).toHaveBeenCalledWith('/api/v1/instances/ins_1');
  });

  it('shows the API error of a refused action', async () => {
    const api = fakeApi();
    api.post.mockRejectedValue(new ApiError(409, 'conflict', 'provider local cannot stop machines: no stop'));
    render(<InstanceCard instance={instance()} canMutate api={api} nowMs={NOW} />);
    await userEvent.setup().click(screen.getByRole('button', { name: 'Pause' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/cannot stop machines/);
  });

  it('sets the simulated GPU load (debounced PUT)', async () => {
    vi.useFakeTimers();
    try {
      const api = fakeApi();
      render(<InstanceCard instance={instance()} canMutate api={api} nowMs={NOW} />);
      const slider = screen.getByLabelText('Simulated GPU load');
      expect(slider.value).toBe('37');
      const { fireEvent } = await import('@testing-library/react');
      fireEvent.change(slider, { target: { value: '10' } });
      fireEvent.change(slider, { target: { value: '0' } });
      expect(api.put).not.toHaveBeenCalled();
      await act(async () => {
        vi.advanceTimersByTime(300);
      });
      expect(api.put).toHaveBeenCalledTimes(1);
      expect(api.put).toHaveBeenCalledWith('/api/v1/instances/ins_1/virtual-gpu', { util: 0 });
    } finally {
      vi.useRealTimers();
    }
  });

  it('shows a readonly user no mutating control', () => {
    render(<InstanceCard instance={instance()} canMutate={false} api={fakeApi()} nowMs={NOW} />);
    for (const name of ['Pause', 'Hibernate', 'Snapshot now', 'Destroy', 'Wake']) {
      expect(screen.queryByRole('button', { name })).toBeNull();
    }
    expect(screen.queryByLabelText('Simulated GPU load')).toBeNull();
    expect(screen.queryByRole('group', { name: 'Actions for trainer' })).toBeNull();
    // Reading stays possible.
    expect(screen.getByText('Events')).toBeTruthy();
    expect(screen.getByTestId('gpu-util').textContent).toBe('37 %');
  });
});

describe('InstanceCard access and recovery', () => {
  it('offers Retry on an instance in error', async () => {
    const api = fakeApi();
    render(<InstanceCard instance={instance({ state: 'error', message: 'deploy failed', telemetry: null })} canMutate api={api} nowMs={NOW} />);
    await userEvent.setup().click(screen.getByRole('button', { name: 'Retry' }));
    expect(api.post).toHaveBeenCalledWith('/api/v1/instances/ins_1/retry');
  });

  it('shows the SSH command to copy when the machine has an SSH endpoint, else the workspace', async () => {
    const user = userEvent.setup(); // installs a clipboard we can read back
    render(<InstanceCard instance={instance({ provider: 'vast', machine: { id: 'v1', price_per_hour: 0.4, ssh_host: 'ssh5.vast.ai', ssh_port: 22104 } })} canMutate api={fakeApi()} nowMs={NOW} />);
    expect(screen.getByTestId('ssh-command').textContent).toBe('ssh -p 22104 root@ssh5.vast.ai');
    expect(screen.queryByTestId('workspace')).toBeNull();
    await user.click(screen.getByRole('button', { name: 'Copy the SSH command of trainer' }));
    expect(await navigator.clipboard.readText()).toBe('ssh -p 22104 root@ssh5.vast.ai');
    expect(await screen.findByText('Copied')).toBeTruthy();
    cleanup();
    render(<InstanceCard instance={instance()} canMutate api={fakeApi()} nowMs={NOW} />);
    expect(screen.queryByTestId('ssh-command')).toBeNull();
    expect(screen.getByRole('button', { name: 'Copy path of the workspace of trainer' })).toBeTruthy();
  });
});
