// The deploy wizard: machine -> requirements and budget -> multi-start strategy -> hibernation -> review,
// then POST /api/v1/deploys. Hibernation starts from the defaults saved in Settings (this browser).
import { useEffect, useId, useRef, useState } from 'react';
import { money } from '../format.js';
import { loadHibernationDefaults } from '../prefs.js';
import { offersPath } from './Offers.jsx';
import { ErrorBox, Loading } from './ui.jsx';

export const STEPS = ['Machine', 'Requirements & budget', 'Strategy', 'Hibernation', 'Review'];
const STEP_OF_FIELD = { name: 0, provider: 0, image: 0, offer_id: 0, requirements: 1, strategy: 2, hibernation: 3 };

// A machine name for an offer: "<gpu>-<offer id>" in lower case, letters, digits and dashes only.
export function deployName(offer) {
  const base = `${offer.gpu_name || offer.provider}-${offer.id}`
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return (base || 'machine').slice(0, 48);
}

export function initialForm(offer, hib = loadHibernationDefaults()) {
  return {
    name: offer ? deployName(offer) : '',
    provider: offer ? offer.provider : 'local',
    image: '',
    offer_id: offer ? offer.id : '',
    gpu: '',
    num_gpus: '',
    min_vram_gb: '',
    max_price: '',
    region: '',
    sort: 'price',
    batch_size: '5',
    max_batches: '3',
    batch_timeout_s: '90',
    hib_enabled: hib.enabled,
    gpu_threshold_pct: String(hib.gpu_threshold_pct),
    idle_seconds: String(hib.idle_seconds),
    release_after_seconds: String(hib.release_after_seconds),
  };
}

const trim = (v) => String(v ?? '').trim();
function numberIn(f, k, label, lo, hi, { int = false, optional = false } = {}) {
  const v = trim(f[k]);
  if (v === '') return optional ? null : { field: k, message: `${label} is required.` };
  const n = Number(v);
  if (!Number.isFinite(n) || (int && !Number.isInteger(n)) || n < lo || n > hi) {
    return { field: k, message: `${label} must be ${int ? 'a whole number' : 'a number'} from ${lo} to ${hi}.` };
  }
  return null;
}

// The first problem of a step, as { field, message }, or null.
export function validateStep(step, f) {
  if (step === 0) {
    const name = trim(f.name);
    if (!name) return { field: 'name', message: 'Give the machine a name.' };
    if (!trim(f.provider)) return { field: 'provider', message: 'Choose a provider.' };
    return null;
  }
  if (step === 1) {
    return (
      numberIn(f, 'num_gpus', 'GPUs', 0, 64, { int: true, optional: true }) ||
      numberIn(f, 'min_vram_gb', 'Min VRAM', 0, 4096, { optional: true }) ||
      numberIn(f, 'max_price', 'Budget', 0, 10000, { optional: true })
    );
  }
  if (step === 2) {
    return (
      numberIn(f, 'batch_size', 'Machines per batch', 1, 16, { int: true }) ||
      numberIn(f, 'max_batches', 'Batches', 1, 10, { int: true }) ||
      numberIn(f, 'batch_timeout_s', 'Batch timeout', 1, 3600, { int: true })
    );
  }
  if (step === 3) {
    if (!f.hib_enabled) return null;
    return (
      numberIn(f, 'gpu_threshold_pct', 'GPU threshold', 0, 100) ||
      numberIn(f, 'idle_seconds', 'Idle time', 1, 7 * 86400, { int: true }) ||
      numberIn(f, 'release_after_seconds', 'Release after', 0, 365 * 86400, { int: true })
    );
  }
  return null;
}

// The POST /api/v1/deploys body: empty requirements are left out.
export function deployBody(f) {
  const body = { name: trim(f.name), provider: trim(f.provider) || 'local' };
  if (trim(f.image)) body.image = trim(f.image);
  if (trim(f.offer_id)) body.offer_id = trim(f.offer_id);
  const req = {};
  if (trim(f.gpu)) req.gpu = trim(f.gpu);
  if (trim(f.num_gpus)) req.num_gpus = Number(f.num_gpus);
  if (trim(f.min_vram_gb)) req.min_vram_gb = Number(f.min_vram_gb);
  if (trim(f.max_price)) req.max_price = Number(f.max_price);
  if (trim(f.region)) req.region = trim(f.region);
  if (f.sort && f.sort !== 'price') req.sort = f.sort;
  if (Object.keys(req).length) body.requirements = req;
  body.strategy = { batch_size: Number(f.batch_size), max_batches: Number(f.max_batches), batch_timeout_s: Number(f.batch_timeout_s) };
  body.hibernation = f.hib_enabled
    ? {
        enabled: true,
        gpu_threshold_pct: Number(f.gpu_threshold_pct),
        idle_seconds: Number(f.idle_seconds),
        release_after_seconds: Number(f.release_after_seconds),
      }
    : { enabled: false };
  return body;
}

// The offers the deploy would choose from (the same filters, on the chosen provider).
export function candidatesPath(f) {
  return offersPath({
    provider: f.provider,
    gpu: f.gpu,
    num_gpus: f.num_gpus,
    min_vram: f.min_vram_gb,
    max_price: f.max_price,
    region: f.region,
    sort: f.sort,
  });
}

export function DeployWizard({ api, offer, providers = ['local'], onDeployed, onCancel }) {
  const id = useId();
  const [form, setForm] = useState(() => initialForm(offer));
  const [step, setStep] = useState(0);
  const [error, setError] = useState(null); // { field?, message }
  const [busy, setBusy] = useState(false);
  const [fromSettings] = useState(() => loadHibernationDefaults().saved);
  const headRef = useRef(null);
  const first = useRef(true);

  useEffect(() => {
    setForm(initialForm(offer));
    setStep(0);
    setError(null);
  }, [offer]);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    headRef.current && headRef.current.focus();
  }, [step]);
  useEffect(() => {
    if (error && error.field) {
      const el = document.getElementById(`${id}-${error.field}`);
      if (el) el.focus();
    }
  }, [error, id]);

  const set = (k) => (e) => setForm((f) => ({ ...f, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value }));
  const next = () => {
    const bad = validateStep(step, form);
    setError(bad);
    if (!bad) setStep((s) => Math.min(s + 1, STEPS.length - 1));
  };
  const back = () => {
    setError(null);
    setStep((s) => Math.max(0, s - 1));
  };
  const submit = async (e) => {
    e.preventDefault();
    if (step < STEPS.length - 1) return next();
    for (let s = 0; s < STEPS.length - 1; s++) {
      const bad = validateStep(s, form);
      if (bad) {
        setStep(s);
        setError(bad);
        return;
      }
    }
    setBusy(true);
    setError(null);
    try {
      const r = await api.post('/api/v1/deploys', deployBody(form));
      onDeployed && onDeployed(r.deploy, form.name.trim());
    } catch (err) {
      // An error that names a field goes back to the step that has it.
      const f = err.field || '';
      const top = f.split('.')[0];
      const leaf = f.includes('.') ? f.split('.').slice(1).join('.') : f;
      const local = { min_vram_gb: 'min_vram_gb', enabled: 'hib_enabled' }[leaf] || leaf;
      if (top in STEP_OF_FIELD) {
        setStep(STEP_OF_FIELD[top]);
        setError({ field: local || undefined, message: err.message, api: true });
      } else {
        setError({ message: err.message, api: true });
      }
    } finally {
      setBusy(false);
    }
  };

  const errId = `${id}-error`;
  const inv = (k) => (error && error.field === k) || undefined;
  const desc = (k, hint) => [hint ? `${id}-${k}-hint` : null, error && error.field === k ? errId : null].filter(Boolean).join(' ') || undefined;
  const input = (k, label, props = {}, hint) => (
    <div className="field">
      <label htmlFor={`${id}-${k}`}>{label}</label>
      <input id={`${id}-${k}`} value={form[k]} onChange={set(k)} aria-invalid={inv(k)} aria-describedby={desc(k, hint)} {...props} />
      {hint ? (
        <small id={`${id}-${k}-hint`} className="hint">
          {hint}
        </small>
      ) : null}
    </div>
  );
  const providerList = [...new Set(['local', ...providers, form.provider].filter(Boolean))].sort();

  return (
    <form className="card wizard" onSubmit={submit} noValidate aria-labelledby={`${id}-title`}>
      <div className="page-head">
        <h2 id={`${id}-title`}>Deploy a machine</h2>
        <button type="button" onClick={onCancel} disabled={busy}>
          Cancel
        </button>
      </div>
      <ol className="steps" aria-label="Deploy steps">
        {STEPS.map((s, i) => (
          <li key={s} aria-current={i === step ? 'step' : undefined} className={i < step ? 'done' : undefined}>
            <span className="step-n" aria-hidden="true">
              {i + 1}
            </span>{' '}
            {s}
          </li>
        ))}
      </ol>
      <fieldset>
        <legend ref={headRef} tabIndex={-1} className="step-title">
          Step {step + 1} of {STEPS.length}: {STEPS[step]}
        </legend>

        {step === 0 ? (
          <div className="form-grid">
            {input('name', 'Name', { autoFocus: true, autoComplete: 'off', maxLength: 64 })}
            <div className="field">
              <label htmlFor={`${id}-provider`}>Provider</label>
              <select id={`${id}-provider`} value={form.provider} onChange={set('provider')} aria-invalid={inv('provider')}>
                {providerList.map((p) => (
                  <option key={p} value={p}>
                    {p}
                  </option>
                ))}
              </select>
            </div>
            {input('image', 'Image (optional)', { placeholder: "the provider's default" })}
          </div>
        ) : null}

        {step === 1 ? (
          <>
            {form.offer_id ? (
              <div className="notice-box" role="note">
                Pinned to offer <code>{form.offer_id}</code> on {form.provider}: only this offer is started (no race).{' '}
                <button type="button" className="link" onClick={() => setForm((f) => ({ ...f, offer_id: '' }))}>
                  Unpin and race offers that match
                </button>
              </div>
            ) : (
              <p className="muted small">The deploy starts the best offers that meet these requirements, several at once.</p>
            )}
            <div className="form-grid">
              {input('gpu', 'GPU model', { placeholder: 'any, e.g. RTX 4090' })}
              {input('num_gpus', 'GPUs', { type: 'number', min: '0', step: '1', inputMode: 'numeric', placeholder: 'any' })}
              {input('min_vram_gb', 'Min VRAM per GPU (GB)', { type: 'number', min: '0', step: 'any', inputMode: 'decimal' })}
              {input('max_price', 'Budget: max price ($/h)', { type: 'number', min: '0', step: 'any', inputMode: 'decimal', placeholder: 'no limit' })}
              {input('region', 'Region', { placeholder: 'any, e.g. US' })}
              <div className="field">
                <label htmlFor={`${id}-sort`}>Prefer</label>
                <select id={`${id}-sort`} value={form.sort} onChange={set('sort')}>
                  <option value="price">cheapest</option>
                  <option value="reliability">most reliable</option>
                  <option value="value">best value (reliability per $)</option>
                </select>
              </div>
            </div>
          </>
        ) : null}

        {step === 2 ? (
          <>
            <p className="muted small">
              Multi-start: each batch starts several machines at once; the first that runs and answers wins, the others are
              destroyed at once. If none is ready before the timeout, the next batch starts.
            </p>
            <div className="form-grid">
              {input('batch_size', 'Machines per batch', { type: 'number', min: '1', max: '16', step: '1', inputMode: 'numeric' }, '1 to 16')}
              {input('max_batches', 'Batches at most', { type: 'number', min: '1', max: '10', step: '1', inputMode: 'numeric' }, '1 to 10')}
              {input('batch_timeout_s', 'Batch timeout (seconds)', { type: 'number', min: '1', max: '3600', step: '1', inputMode: 'numeric' })}
            </div>
          </>
        ) : null}

        {step === 3 ? (
          <>
            <p className="muted small" data-testid="hibernation-source">
              {fromSettings
                ? 'Prefilled from your defaults in Settings (saved in this browser).'
                : 'Prefilled with the server defaults; change your own in Settings → Hibernation defaults.'}
            </p>
            <label className="check">
              <input type="checkbox" id={`${id}-hib_enabled`} checked={form.hib_enabled} onChange={set('hib_enabled')} /> Hibernate
              when idle (snapshot, then destroy the machine; wake restores it)
            </label>
            {form.hib_enabled ? (
              <div className="form-grid">
                {input('gpu_threshold_pct', 'Idle below GPU utilisation (%)', { type: 'number', min: '0', max: '100', step: 'any', inputMode: 'decimal' })}
                {input('idle_seconds', 'Hibernate after idle (seconds)', { type: 'number', min: '1', step: '1', inputMode: 'numeric' })}
                {input('release_after_seconds', 'Release reservations after (seconds)', { type: 'number', min: '0', step: '1', inputMode: 'numeric' })}
              </div>
            ) : null}
          </>
        ) : null}

        {step === 4 ? <Review api={api} form={form} /> : null}
      </fieldset>

      {error ? (
        <div id={errId} className="error" role="alert">
          {error.api ? <strong>Cannot deploy: </strong> : null}
          {error.message}
        </div>
      ) : null}
      <div className="actions">
        {step > 0 ? (
          <button type="button" onClick={back} disabled={busy}>
            Back
          </button>
        ) : null}
        {step < STEPS.length - 1 ? (
          <button type="submit" className="primary">
            Next
          </button>
        ) : (
          <button type="submit" className="primary" disabled={busy}>
            {busy ? 'Deploying…' : 'Deploy'}
          </button>
        )}
      </div>
    </form>
  );
}

function Review({ api, form }) {
  const [state, setState] = useState({ loading: true, data: null, error: null });
  const path = candidatesPath(form);
  useEffect(() => {
    let alive = true;
    setState({ loading: true, data: null, error: null });
    api.get(path).then(
      (r) => alive && setState({ loading: false, data: r, error: null }),
      (error) => alive && setState({ loading: false, data: null, error }),
    );
    return () => {
      alive = false;
    };
  }, [api, path]);
  const body = deployBody(form);
  const req = body.requirements || {};
  const offers = state.data ? (state.data.offers || []).filter((o) => !o.blacklisted) : [];
  const pinned = form.offer_id ? offers.find((o) => o.id === form.offer_id) : null;
  const batch = Math.min(body.strategy.batch_size, offers.length);
  return (
    <>
      <dl className="facts review">
        <div>
          <dt>Name</dt>
          <dd>{body.name}</dd>
        </div>
        <div>
          <dt>Provider</dt>
          <dd>{body.provider}</dd>
        </div>
        <div>
          <dt>Offer</dt>
          <dd>{body.offer_id ? <code>{body.offer_id}</code> : 'best matches (race)'}</dd>
        </div>
        <div>
          <dt>Requirements</dt>
          <dd>
            {[
              req.gpu && `GPU ${req.gpu}`,
              req.num_gpus && `${req.num_gpus} GPU(s)`,
              req.min_vram_gb && `${req.min_vram_gb} GB+ VRAM`,
              req.region && `in ${req.region}`,
              req.sort && `prefer ${req.sort}`,
            ]
              .filter(Boolean)
              .join(', ') || 'any'}
          </dd>
        </div>
        <div>
          <dt>Budget</dt>
          <dd>{req.max_price != null ? `${money(req.max_price)}/h at most` : 'no limit'}</dd>
        </div>
        <div>
          <dt>Strategy</dt>
          <dd>
            {body.strategy.batch_size} per batch, up to {body.strategy.max_batches} batch(es), {body.strategy.batch_timeout_s} s each
          </dd>
        </div>
        <div className="wide">
          <dt>Hibernation</dt>
          <dd>
            {body.hibernation.enabled
              ? `after ${body.hibernation.idle_seconds} s under ${body.hibernation.gpu_threshold_pct} % GPU; release after ${body.hibernation.release_after_seconds} s`
              : 'off'}
          </dd>
        </div>
      </dl>
      {state.loading ? <Loading label="Checking matching offers…" /> : null}
      <ErrorBox error={state.error} title="Cannot check offers" />
      {state.data ? (
        <p className={offers.length && (!form.offer_id || pinned) ? 'notice' : 'warn'} role="status" data-testid="candidates">
          {form.offer_id
            ? pinned
              ? `Offer ${form.offer_id} is available at ${money(pinned.price_per_hour, 3)}/h.`
              : `Offer ${form.offer_id} is not listed with these requirements any more; the deploy will likely fail.`
            : offers.length
              ? `${offers.length} offer(s) match; the first batch starts ${batch} of them${offers[0] ? `, from ${money(offers[0].price_per_hour, 3)}/h` : ''}.`
              : 'No offer matches these requirements now; the deploy would fail. Go back and relax them.'}
        </p>
      ) : null}
    </>
  );
}
