import { cleanup, render, screen } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError } from '../api.js';
import { LoginForm } from './Login.jsx';

afterEach(cleanup);

describe('LoginForm', () => {
  it('shows the API message when the login is refused', async () => {
    const onLogin = vi.fn().mockRejectedValue(new ApiError(401, 'unauthenticated', 'wrong email or password'));
    render(<LoginForm onLogin={onLogin} onRegister={vi.fn()} />);
    const user = userEvent.setup();
    await user.type(screen.getByLabelText('Email'), 'me@example.com');
    await user.type(screen.getByLabelText('Password'), 'not-my-password');
    await user.click(screen.getByRole('button', { name: 'Log in' }));
    expect(await screen.findByRole('alert')).toHaveProperty('textContent', 'wrong email or password');
    expect(onLogin).toHaveBeenCalledWith('me@example.com', 'not-my-password');
    expect(screen.getByRole('button', { name: 'Log in' }).disabled).toBe(false);
  });

  it('marks the field the API names on sign-up, and does not log in', async () => {
    const onRegister = vi
      .fn()
      .mockRejectedValue(new ApiError(400, 'invalid_argument', 'password is on the list of most common passwords; choose another', 'password'));
    const onLogin = vi.fn();
    render(<LoginForm onLogin={onLogin} onRegister={onRegister} />);
    const user = userEvent.setup();
    await user.click(screen.getByRole('button', { name: 'Create an account' }));
    expect(screen.getByRole('heading', { name: 'Create your account' })).toBeTruthy();
    await user.type(screen.getByLabelText('Email'), 'new@example.com');
    await user.type(screen.getByLabelText('Password'), '0123456789');
    await user.keyboard('{Enter}');
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toMatch(/most common passwords/);
    const pw = screen.getByLabelText('Password');
    expect(pw.getAttribute('aria-invalid')).toBe('true');
    expect(pw.getAttribute('aria-describedby')).toContain(alert.id);
    expect(screen.getByLabelText('Email').getAttribute('aria-invalid')).toBeNull();
    expect(onLogin).not.toHaveBeenCalled();
  });

  it('registers then logs in with the same credentials', async () => {
    const onRegister = vi.fn().mockResolvedValue({ user: { id: 'usr_1' } });
    const onLogin = vi.fn().mockResolvedValue(undefined);
    render(<LoginForm onLogin={onLogin} onRegister={onRegister} />);
    const user = userEvent.setup();
    await user.click(screen.getByRole('button', { name: 'Create an account' }));
    await user.type(screen.getByLabelText('Email'), ' new@example.com ');
    await user.type(screen.getByLabelText('Password'), 'violet-harbor-7719');
    await user.click(screen.getByRole('button', { name: 'Create account' }));
    expect(onRegister).toHaveBeenCalledWith('new@example.com', 'violet-harbor-7719');
    expect(onLogin).toHaveBeenCalledWith('new@example.com', 'violet-harbor-7719');
  });

  it('asks for both fields before calling the API', async () => {
    const onLogin = vi.fn();
    render(<LoginForm onLogin={onLogin} onRegister={vi.fn()} />);
    await userEvent.setup().click(screen.getByRole('button', { name: 'Log in' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/email and password/);
    expect(screen.getByLabelText('Email').getAttribute('aria-invalid')).toBe('true');
    expect(onLogin).not.toHaveBeenCalled();
  });
});
