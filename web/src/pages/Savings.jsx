import { useAuth } from '../auth.jsx';
import { SavingsChart } from '../components/SavingsChart.jsx';
import { ErrorBox, Loading } from '../components/ui.jsx';
import { dateTime, hours, money } from '../format.js';
import { useLoad } from '../useLoad.js';

export function SavingsPage() {
  const { api } = useAuth();
  const data = useLoad(async () => {
    const [real, history, events, instances] = await Promise.all([
      api.get('/api/v1/metrics/savings/real'),
      api.get('/api/v1/metrics/savings/history'),
      api.get('/api/v1/metrics/hibernation/events'),
      api.get('/api/v1/instances'),
    ]);
    const names = new Map(instances.instances.map((i) => [i.id, i.name]));
    return { real, history: history.history, events: events.events, names };
  }, 'savings');

  const d = data.data;
  const name = (id) => (d && d.names.get(id)) || id;
  return (
    <section aria-labelledby="savings-title">
      <div className="page-head">
        <h1 id="savings-title">Savings</h1>
        <button type="button" onClick={data.reload} disabled={data.loading}>
          {data.loading ? 'Refreshing…' : 'Refresh'}
        </button>
      </div>
      {data.loading && !d ? <Loading label="Loading savings…" /> : null}
      <ErrorBox error={data.error} title="Cannot load savings" onRetry={data.reload} />
      {d ? (
        <>
          <div className="stats">
            <div className="card stat">
              <span className="stat-label">Saved by hibernation</span>
              <span className="stat-value" data-testid="total-dollars">
                {money(d.real.total_dollars)}
              </span>
            </div>
            <div className="card stat">
              <span className="stat-label">GPU time not billed</span>
              <span className="stat-value" data-testid="total-hours">
                {hours(d.real.total_hours)}
              </span>
            </div>
            <div className="card stat">
              <span className="stat-label">Hibernations</span>
              <span className="stat-value" data-testid="hibernations">
                {d.real.hibernations}
              </span>
            </div>
          </div>

          <div className="card">
            <h2>Per day</h2>
            {d.history.length ? <SavingsChart history={d.history} /> : <p className="muted">No finished hibernations yet.</p>}
          </div>

          <div className="card">
            <h2>Per machine</h2>
            {d.real.per_instance.length ? (
              <div className="table-wrap">
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Machine</th>
                      <th scope="col">Hibernated</th>
                      <th scope="col">Saved</th>
                    </tr>
                  </thead>
                  <tbody>
                    {d.real.per_instance.map((p) => (
                      <tr key={p.instance_id} data-testid="savings-row">
                        <td>{name(p.instance_id)}</td>
                        <td>{hours(p.hours)}</td>
                        <td>{money(p.dollars)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            ) : (
              <p className="muted">No machine has hibernated yet.</p>
            )}
          </div>

          <div className="card">
            <h2>Hibernation events</h2>
            {d.events.length ? (
              <div className="table-wrap">
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Machine</th>
                      <th scope="col">Started</th>
                      <th scope="col">Ended</th>
                      <th scope="col">Price</th>
                      <th scope="col">Hours</th>
                      <th scope="col">Saved</th>
                    </tr>
                  </thead>
                  <tbody>
                    {d.events.map((e) => (
                      <tr key={e.id} data-testid="hibernation-event">
                        <td>{name(e.instance_id)}</td>
                        <td>{dateTime(e.started_at)}</td>
                        <td>{e.ended_at ? dateTime(e.ended_at) : 'still hibernated'}</td>
                        <td>{money(e.price_per_hour)}/h</td>
                        <td>{hours(e.hours)}</td>
                        <td>{money(e.dollars)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            ) : (
              <p className="muted">No hibernation events yet.</p>
            )}
          </div>
        </>
      ) : null}
    </section>
  );
}
