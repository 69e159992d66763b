import { useState } from 'react';

export function ErrorBox({ error, onRetry, title }) {
  if (!error) return null;
  const msg = typeof error === 'string' ? error : error.message;
  return (
    <div className="error" role="alert">
      {title ? <strong>{title}: </strong> : null}
      {msg}
      {onRetry ? (
        <button type="button" className="link" onClick={onRetry}>
          Retry
        </button>
      ) : null}
    </div>
  );
}

// The providers a market query could not reach (`provider_errors` of /offers and /metrics/spot/*):
// shown beside whatever the others answered.
export function ProviderErrors({ errors }) {
  if (!errors || !errors.length) return null;
  return (
    <div className="warn" role="status" data-testid="provider-errors">
      Some providers did not answer: {errors.map((e) => `${e.provider}: ${e.error || e.message || 'error'}`).join('; ')}
    </div>
  );
}

export function Loading({ label = 'Loading…' }) {
  return (
    <p className="loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" /> {label}
    </p>
  );
}

const STATE_CLASS = {
  running: 'ok',
  provisioning: 'busy',
  waking: 'busy',
  hibernating: 'busy',
  pausing: 'busy',
  destroying: 'busy',
  hibernated: 'sleep',
  paused: 'sleep',
  destroyed: 'off',
  error: 'bad',
  pending: 'busy',
  succeeded: 'ok',
  failed: 'bad',
};

export function StateBadge({ state, label }) {
  return (
    <span className={`badge badge-${STATE_CLASS[state] || 'off'}`} data-state={state}>
      {label ?? state}
    </span>
  );
}

// The last readings as a small line, scaled 0..max (percentages by default).
export function Sparkline({ values, width = 120, height = 28, label, max = 100, unit = ' %' }) {
  if (!values || values.length === 0) {
    return <svg className="sparkline" width={width} height={height} role="img" aria-label={`${label}: no readings yet`} />;
  }
  const n = values.length;
  const step = n > 1 ? width / (n - 1) : 0;
  const top = max > 0 ? max : 1;
  const y = (v) => height - 2 - (Math.max(0, Math.min(top, v)) / top) * (height - 4);
  const pts = values.map((v, i) => `${(n > 1 ? i * step : width / 2).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  return (
    <svg
      className="sparkline"
      width={width}
      height={height}
      viewBox={`0 0 ${width} ${height}`}
      role="img"
      aria-label={`${label}: last ${n} readings, latest ${Math.round(values[n - 1])}${unit}`}
    >
      <polyline points={pts} fill="none" stroke="currentColor" strokeWidth="1.5" />
    </svg>
  );
}

// Copies text to the clipboard; says whether it worked (the text stays selectable either way).
export function CopyButton({ text, label = 'Copy', what }) {
  const [state, setState] = useState(null);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setState('Copied');
    } catch {
      setState('Copy failed: select the text');
    }
    setTimeout(() => setState(null), 2000);
  };
  return (
    <>
      <button type="button" className="small-btn" onClick={copy} aria-label={what ? `${label} ${what}` : label}>
        {label}
      </button>
      <span className="muted small" role="status">
        {state}
      </span>
    </>
  );
}
