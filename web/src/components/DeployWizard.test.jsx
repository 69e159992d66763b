import { cleanup, render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from '../api.js';
import { saveHibernationDefaults } from '../prefs.js';
import { deployBody, DeployWizard, initialForm, validateStep } from './DeployWizard.jsx';

beforeEach(() => localStorage.clear());
afterEach(cleanup);

function fakeApi() {
  return {
    get: vi.fn(async () => ({ offers: [{ id: 'local-1', provider: 'local', price_per_hour: 2.5 }], count: 1 })),
    post: vi.fn(async () => ({ deploy: { id: 'dep_1', state: 'pending', created_ms: 1 } })),
  };
}

describe('deploy wizard rules', () => {
  it('checks each step and names the field', () => {
    const f = initialForm(null);
    expect(validateStep(0, f)).toEqual({ field: 'name', message: 'Give the machine a name.' });
    expect(validateStep(1, { ...f, max_price: '-1' }).field).toBe('max_price');
    expect(validateStep(2, { ...f, batch_size: '17' }).field).toBe('batch_size');
    expect(validateStep(2, { ...f, max_batches: '1.5' }).field).toBe('max_batches');
    expect(validateStep(3, { ...f, idle_seconds: '0' }).field).toBe('idle_seconds');
    expect(validateStep(3, { ...f, hib_enabled: false, idle_seconds: '0' })).toBeNull();
  });

  it('builds the POST body: requirements only when given, budget as max_price', () => {
    const f = { ...initialForm(null), name: ' trainer ', gpu: 'RTX 4090', max_price: '1.2', region: 'US', sort: 'value', num_gpus: '2' };
    expect(deployBody(f)).toEqual({
      name: 'trainer',
      provider: 'local',
      requirements: { gpu: 'RTX 4090', num_gpus: 2, max_price: 1.2, region: 'US', sort: 'value' },
      strategy: { batch_size: 5, max_batches: 3, batch_timeout_s: 90 },
      hibernation: { enabled: true, gpu_threshold_pct: 5, idle_seconds: 180, release_after_seconds: 1800 },
    });
    expect(deployBody({ ...f, hib_enabled: false }).hibernation).toEqual({ enabled: false });
  });
});

describe('DeployWizard', () => {
  it('starts hibernation from the defaults saved in Settings and says so', async () => {
    saveHibernationDefaults({ enabled: true, gpu_threshold_pct: 3, idle_seconds: 900, release_after_seconds: 60 });
    const api = fakeApi();
    render(<DeployWizard api={api} onDeployed={vi.fn()} onCancel={vi.fn()} />);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Name'), 'job');
    for (let i = 0; i < 3; i++) await user.click(screen.getByRole('button', { name: 'Next' }));
    expect(screen.getByText('Step 4 of 5: Hibernation')).toBeTruthy();
    expect(screen.getByTestId('hibernation-source').textContent).toMatch(/Prefilled from your defaults in Settings/);
    expect(screen.getByLabelText('Hibernate after idle (seconds)').value).toBe('900');
    expect(screen.getByLabelText('Idle below GPU utilisation (%)').value).toBe('3');
  });

  it('does not move on while a step is invalid; the error is tied to the field and focused', async () => {
    render(<DeployWizard api={fakeApi()} onDeployed={vi.fn()} onCancel={vi.fn()} />);
    const user = userEvent.setup();
    await user.click(screen.getByRole('button', { name: 'Next' }));
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/name/);
    const name = screen.getByLabelText('Name');
    expect(name.getAttribute('aria-invalid')).toBe('true');
    expect(name.getAttribute('aria-describedby')).toContain(alert.id);
    expect(document.activeElement).toBe(name);
    expect(screen.getByText('Step 1 of 5: Machine')).toBeTruthy();
  });

  it('is usable with the keyboard alone: Enter moves on, the step heading takes focus', async () => {
    const onDeployed = vi.fn();
    const api = fakeApi();
    render(<DeployWizard api={api} onDeployed={onDeployed} onCancel={vi.fn()} />);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Name'), 'kb{Enter}');
    expect(document.activeElement.textContent).toBe('Step 2 of 5: Requirements & budget');
    await user.tab();
    await user.keyboard('4090');
    expect(screen.getByLabelText('GPU model').value).toBe('4090');
    await user.click(screen.getByRole('button', { name: 'Next' }));
    await user.click(screen.getByRole('button', { name: 'Next' }));
    await user.click(screen.getByRole('button', { name: 'Next' }));
    await screen.findByTestId('candidates');
    expect(api.get).toHaveBeenCalledWith('/api/v1/instances/offers?gpu=4090&provider=local&sort=price');
    await user.click(screen.getByRole('button', { name: 'Deploy' }));
    expect(onDeployed).toHaveBeenCalledWith({ id: 'dep_1', state: 'pending', created_ms: 1 }, 'kb');
  });

  it('takes an API error that names a field back to its step', async () => {
    const api = fakeApi();
    api.post.mockRejectedValue(new ApiError(400, 'invalid_argument', 'strategy.batch_timeout_s must be between 1 and 3600', 'strategy.batch_timeout_s'));
    const offer = { id: 'o-1', provider: 'vast', gpu_name: 'RTX 4090' };
    render(<DeployWizard api={api} offer={offer} providers={['local', 'vast']} onDeployed={vi.fn()} onCancel={vi.fn()} />);
    const user = userEvent.setup();
    expect(screen.getByLabelText('Provider').value).toBe('vast');
    await user.click(screen.getByRole('button', { name: 'Next' }));
    expect(screen.getByText(/Pinned to offer/)).toBeTruthy();
    for (let i = 0; i < 3; i++) await user.click(screen.getByRole('button', { name: 'Next' }));
    await user.click(screen.getByRole('button', { name: 'Deploy' }));
    expect(api.post.mock.calls[0][1]).toMatchObject({ name: 'rtx-4090-o-1', provider: 'vast', offer_id: 'o-1' });
    expect(await screen.findByText('Step 3 of 5: Strategy')).toBeTruthy();
    const alert = screen.getByRole('alert');
    expect(alert.textContent).toMatch(/Cannot deploy: strategy.batch_timeout_s/);
    expect(within(screen.getByRole('form', { name: 'Deploy a machine' })).getByLabelText('Batch timeout (seconds)').getAttribute('aria-invalid')).toBe('true');
  });
});
