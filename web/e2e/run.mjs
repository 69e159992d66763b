// End-to-end test of the web console: starts a real dumontd serving web/dist, drives Debian's
// chromium with playwright-core, and walks sign-up -> machine -> hibernate -> wake -> savings -> market.
// Usage: node e2e/run.mjs   (env DUMONTD, CHROMIUM, SCREENSHOTS, E2E_KEEP=1 keeps the data dir)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const webDir = path.resolve(here, '..');
const distDir = path.join(webDir, 'dist');
const dumontd = path.resolve(webDir, process.env.DUMONTD || '../build/bin/dumontd');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const shotsDir = path.resolve(process.env.SCREENSHOTS || path.join(webDir, '..', 'tests', 'e2e', 'screenshots'));
const EMAIL = 'e2e@example.com';
const PASSWORD = 'violet-harbor-7719';
const NEW_PASSWORD = 'amber-lantern-3302';
let currentPassword = PASSWORD;
const started = Date.now();
let passed = 0;
let failed = 0;

const log = (...a) => console.log(`[e2e ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);

async function step(name, fn) {
  const t = Date.now();
  try {
    await fn();
    passed++;
    log(`ok   ${name} (${Date.now() - t} ms)`);
  } catch (err) {
    failed++;
    log(`FAIL ${name}: ${err && err.message ? err.message.split('\n')[0] : err}`);
    throw err;
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitHealthy(base, proc, ms = 15000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (proc.exitCode !== null) throw new Error(`dumontd exited with ${proc.exitCode}`);
    try {
      const r = await fetch(base + '/health');
      if (r.ok) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('dumontd did not become healthy');
}

// Agents started by this dumontd carry DUMONT_AGENT_SERVER=http://127.0.0.1:<port> in their environment.
function agentsOf(port) {
  const pids = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const env = fs.readFileSync(`/proc/${d}/environ`, 'latin1');
      if (env.includes(`DUMONT_AGENT_SERVER=http://127.0.0.1:${port}\0`)) pids.push(Number(d));
    } catch {
      /* gone or not ours */
    }
  }
  return pids;
}

async function api(base, method, p, token, body) {
  const r = await fetch(base + p, {
    method,
    headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json().catch(() => null);
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

async function main() {
  if (!fs.existsSync(path.join(distDir, 'index.html'))) throw new Error(`${distDir}/index.html is missing: run npm run build`);
  if (!fs.existsSync(dumontd)) throw new Error(`dumontd not found at ${dumontd} (set DUMONTD)`);
  fs.mkdirSync(shotsDir, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dumont-web-e2e-'));
  const dataDir = path.join(tmp, 'data');
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const args = [
    '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`,
    '--set', 'fleet.heartbeat_interval_s=1', '--set', 'auth.password_hash=fast',
    '--set', 'fleet.local_price_per_hour=2.5', '--set', `web.dir=${distDir}`,
  ];
  log('starting', dumontd, args.join(' '));
  const logFile = fs.openSync(path.join(tmp, 'dumontd.log'), 'w');
  const proc = spawn(dumontd, args, { stdio: ['ignore', logFile, logFile] });
  let context;
  const consoleErrors = [];
  try {
    await waitHealthy(base, proc);
    const profile = path.join(tmp, 'chromium-profile');
    context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync',
      ],
    });
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(15000);
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(`console: ${m.text()} (${m.location().url || ''})`);
    });
    page.on('pageerror', (e) => consoleErrors.push(`page error: ${e.message}`));
    const shot = async (name) => {
      await page.screenshot({ path: path.join(shotsDir, name), fullPage: true });
      log('screenshot', path.join(shotsDir, name));
    };

    await step('console served by dumontd; deep link falls back to index.html', async () => {
      await page.goto(base + '/savings');
      await page.getByRole('heading', { name: 'Log in to Dumont Cloud' }).waitFor();
      if (!page.url().endsWith('/login')) throw new Error(`expected /login, at ${page.url()}`);
      await shot('login.png');
    });

    await step('sign up', async () => {
      await page.getByRole('button', { name: 'Create an account' }).click();
      await page.getByLabel('Email').fill(EMAIL);
      await page.getByLabel('Password').fill(PASSWORD);
      await shot('signup.png');
      await page.getByRole('button', { name: 'Create account' }).click();
      await page.getByRole('heading', { name: 'Machines' }).waitFor();
    });

    await step('log out and log in again', async () => {
      await page.getByRole('button', { name: 'Log out' }).click();
      await page.getByRole('heading', { name: 'Log in to Dumont Cloud' }).waitFor();
      await page.getByLabel('Email').fill(EMAIL);
      await page.getByLabel('Password').fill(PASSWORD);
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByRole('heading', { name: 'Machines' }).waitFor();
      await page.getByText('No machines yet').waitFor();
    });

    await step('create a local machine (idle 4 s)', async () => {
      await page.getByRole('button', { name: 'New machine' }).click();
      await page.getByLabel('Name').fill('e2e-gpu');
      await page.getByLabel('Hibernate after idle (seconds)').fill('4');
      await page.getByRole('button', { name: 'Create machine' }).click();
      await page.locator('article.instance').first().waitFor();
    });

    const card = page.locator('article.instance', { has: page.getByRole('heading', { name: 'e2e-gpu' }) });
    const stateIs = (s, timeout = 20000) => card.and(page.locator(`[data-state="${s}"]`)).waitFor({ timeout });
    const slider = card.getByLabel('Simulated GPU load');
    const gpu = card.getByTestId('gpu-util');

    await step('running with heartbeats; slider holds it at 60 %', async () => {
      // A fresh machine reports 0 % and would hibernate after 4 s: raise the load in time (up to 3 tries).
      for (let attempt = 1; ; attempt++) {
        await stateIs('running');
        await page.waitForFunction((el) => /\d+ %/.test(el.textContent), await gpu.elementHandle());
        if (await slider.isEnabled()) await slider.fill('60');
        try {
          await card.getByText('Set to 60 %').waitFor({ timeout: 3000 });
          await gpu.filter({ hasText: '60 %' }).waitFor({ timeout: 5000 });
          await stateIs('running', 1000);
          break;
        } catch (err) {
          if (attempt >= 3) throw err;
          log(`machine went idle before the load was set (attempt ${attempt}); waking it`);
          await stateIs('hibernated');
          await card.getByRole('button', { name: 'Wake' }).click();
        }
      }
      await card.getByTestId('heartbeat').waitFor();
      await card.locator('.sparkline polyline').waitFor();
      await shot('machines.png');
    });

    await step('GPU load 0 via the slider -> hibernated, snapshot listed', async () => {
      await slider.fill('0');
      await card.getByText('Set to 0 %').waitFor();
      await stateIs('hibernated', 30000);
      await card.getByText('Snapshots').click();
      await card.getByTestId('snapshot-row').first().waitFor();
      await card.getByText('Events').click();
      await card.locator('.timeline li', { hasText: 'hibernating -> hibernated' }).first().waitFor();
      await shot('machines-hibernated.png');
    });

    await step('wake -> running again', async () => {
      await card.getByRole('button', { name: 'Wake' }).click();
      await stateIs('running', 30000);
      await page.waitForFunction((el) => /\d+ %/.test(el.textContent), await gpu.elementHandle());
      await card.locator('.timeline li', { hasText: 'restoring snapshot' }).first().waitFor();
      await shot('machines-woken.png');
    });

    await step('savings appear', async () => {
      await page.getByRole('link', { name: 'Savings' }).click();
      await page.getByRole('heading', { name: 'Savings' }).waitFor();
      await page.getByTestId('hibernation-event').first().waitFor();
      await page.getByTestId('savings-row').filter({ hasText: 'e2e-gpu' }).waitFor();
      const total = await page.getByTestId('total-dollars').textContent();
      if (!/^\$0\.\d*[1-9]/.test(total) && !/^\$[1-9]/.test(total)) throw new Error(`total saved is ${total}`);
      await page.locator('.chart-box canvas').waitFor();
      log('saved', total, 'in', await page.getByTestId('hibernations').textContent(), 'hibernation(s)');
      await shot('savings.png');
    });

    await step('market lists the local offer', async () => {
      await page.getByRole('link', { name: 'Market' }).click();
      await page.getByRole('heading', { name: 'Market', exact: true }).waitFor();
      const row = page.locator('[data-testid="offer-row"][data-provider="local"][data-offer-id="local-1"]');
      await row.waitFor();
      if (!(await row.getByRole('button', { name: 'Deploy local local-1' }).isVisible())) throw new Error('no Deploy button');
      await page.getByTestId('history-totals').waitFor();
      await shot('market.png');
    });

    await step('settings: create an API key (shown once), revoke it', async () => {
      await page.getByRole('link', { name: 'Settings' }).click();
      await page.getByLabel('Key name').fill('e2e key');
      await page.getByRole('button', { name: 'Create key' }).click();
      const key = await page.getByTestId('new-key').textContent();
      if (!key.startsWith('dk_')) throw new Error(`unexpected key ${key}`);
      await page.getByTestId('api-key-row').filter({ hasText: 'e2e key' }).waitFor();
      await shot('settings.png');
      await page.getByRole('button', { name: 'Revoke e2e key' }).click();
      await page.getByRole('button', { name: 'Confirm revoking e2e key' }).click();
      await page.getByText('No API keys.').waitFor();
    });

    await step('phone width (390 px)', async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      await page.getByRole('link', { name: 'Machines' }).click();
      await card.waitFor();
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      if (overflow > 1) throw new Error(`page is ${overflow} px wider than the viewport`);
      await shot('machines-mobile.png');
      await page.setViewportSize({ width: 1280, height: 900 });
    });

    await step('readonly role: session restored on reload, no mutating control', async () => {
      const setRole = async (role) => {
        const m = fs.readFileSync(path.join(tmp, 'dumontd.log'), 'utf8').match(/password:\s+(\S+)/);
        if (!m) throw new Error('no first-run admin password in the dumontd log');
        const admin = await api(base, 'POST', '/api/v1/auth/login', null, { email: 'admin@dumont.local', password: m[1] });
        const { users } = await api(base, 'GET', '/api/v1/admin/users', admin.access_token);
        const me = users.find((u) => u.email === EMAIL);
        await api(base, 'PATCH', `/api/v1/admin/users/${me.id}`, admin.access_token, { role });
      };
      await setRole('readonly');
      await page.reload(); // the access token lived in memory only: the stored refresh token restores the session
      await card.waitFor();
      await page.getByTestId('role').filter({ hasText: 'readonly' }).waitFor();
      for (const name of ['New machine', 'Destroy', 'Wake', 'Hibernate', 'Pause']) {
        if (await page.getByRole('button', { name, exact: true }).count()) throw new Error(`readonly user sees "${name}"`);
      }
      if (await page.getByLabel('Simulated GPU load').count()) throw new Error('readonly user sees the GPU slider');
      await shot('machines-readonly.png');
      await page.getByRole('link', { name: 'Settings' }).click();
      await page.getByRole('heading', { name: 'API keys' }).waitFor();
      if (await page.getByRole('button', { name: 'Create key' }).count()) throw new Error('readonly user can create keys');
      await setRole('user');
      await page.getByRole('link', { name: 'Machines' }).click();
      await page.reload();
      await page.getByRole('button', { name: 'New machine' }).waitFor();
    });

    await step('destroy the machine (with confirmation)', async () => {
      await card.getByRole('button', { name: 'Destroy' }).click();
      await card.getByRole('button', { name: 'Yes, destroy' }).click();
      await card.waitFor({ state: 'detached', timeout: 30000 });
    });

    await step('change password -> logged out -> log in with the new one', async () => {
      await page.getByRole('link', { name: 'Settings' }).click();
      await page.getByLabel('Current password').fill(PASSWORD);
      await page.getByLabel('New password', { exact: true }).fill(NEW_PASSWORD);
      await page.getByLabel('New password again').fill(NEW_PASSWORD);
      await page.getByRole('button', { name: 'Change password' }).click();
      await page.getByText('Password changed').waitFor();
      currentPassword = NEW_PASSWORD;
      await page.getByRole('heading', { name: 'Log in to Dumont Cloud' }).waitFor();
      await page.getByLabel('Email').fill(EMAIL);
      await page.getByLabel('Password').fill(NEW_PASSWORD);
      await page.getByRole('button', { name: 'Log in' }).click();
      await page.getByRole('heading', { name: 'Machines' }).waitFor();
    });

    await step('no console errors', async () => {
      if (consoleErrors.length) throw new Error(consoleErrors.join('\n'));
    });
  } finally {
    if (context) await context.close().catch(() => {});
    // Destroy whatever is left through the API so no agent survives, then stop dumontd.
    try {
      if (proc.exitCode === null) {
        const t = await api(base, 'POST', '/api/v1/auth/login', null, { email: EMAIL, password: currentPassword });
        const { instances } = await api(base, 'GET', '/api/v1/instances', t.access_token);
        for (const i of instances) {
          if (i.state !== 'destroyed' && i.desired !== 'destroyed') await api(base, 'DELETE', `/api/v1/instances/${i.id}`, t.access_token);
        }
        const end = Date.now() + 20000;
        while (Date.now() < end) {
          const { instances: now } = await api(base, 'GET', '/api/v1/instances', t.access_token);
          if (now.every((i) => i.state === 'destroyed') && agentsOf(port).length === 0) break;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    } catch (err) {
      log('cleanup through the API failed:', err.message);
    }
    if (proc.exitCode === null) {
      proc.kill('SIGTERM');
      await Promise.race([new Promise((r) => proc.once('exit', r)), new Promise((r) => setTimeout(r, 8000))]);
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    }
    const left = agentsOf(port);
    if (left.length) {
      failed++;
      log(`FAIL agents still running after the test: ${left.join(' ')} (killing them)`);
      for (const pid of left) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    if (failed) log('dumontd log:', path.join(tmp, 'dumontd.log'), '(kept)');
    else if (!process.env.E2E_KEEP) fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main()
  .catch((err) => {
    if (!failed) failed++;
    console.error(err && err.stack ? err.stack : err);
  })
  .finally(() => {
    console.log(`e2e: ${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
  });
