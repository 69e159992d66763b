#include "api/app.h"

namespace dumont::api {

// A self-contained reference page (no CDN: dumontd often runs where the browser has no internet):
// it fetches /api/v1/openapi.json and renders every operation with its parameters and body fields.
std::string DocsPageHtml() {
  return R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Dumont Cloud API</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}
header{background:#14213d;color:#fff;padding:16px 24px}h1{margin:0;font-size:20px}
main{max-width:980px;margin:0 auto;padding:16px}
.op{background:#fff;border:1px solid #d8dde3;border-radius:8px;margin:10px 0;padding:10px 14px}
.m{display:inline-block;min-width:64px;font-weight:700;font-family:monospace}
.GET{color:#1f7a1f}.POST{color:#a05a00}.PATCH{color:#6a3fb5}.PUT{color:#6a3fb5}.DELETE{color:#b3261e}
code{font-family:ui-monospace,monospace}table{border-collapse:collapse;margin-top:6px}
td,th{border-bottom:1px solid #eee;padding:2px 10px 2px 0;text-align:left;font-size:13px}
.tag{color:#555;font-size:12px;text-transform:uppercase;letter-spacing:.05em;margin-top:22px}
.lock{font-size:12px;color:#555}
</style></head><body>
<header><h1>Dumont Cloud API</h1><div id="info">loading /api/v1/openapi.json ...</div></header>
<main id="ops" aria-live="polite"></main>
<script>
const esc = s => String(s ?? '').replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
fetch('/api/v1/openapi.json').then(r => r.json()).then(doc => {
  document.getElementById('info').textContent = 'version ' + doc.info.version + ' - ' + doc.info.description;
  const byTag = {};
  for (const [path, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops))
      (byTag[op.tags[0]] ??= []).push({path, method: method.toUpperCase(), op});
  let html = '';
  for (const [tag, list] of Object.entries(byTag)) {
    html += '<div class="tag">' + esc(tag) + '</div>';
    for (const {path, method, op} of list) {
      html += '<div class="op"><span class="m ' + method + '">' + method + '</span> <code>' + esc(path) +
        '</code> ' + (op.security.length ? '<span class="lock">(auth)</span>' : '') + '<div>' + esc(op.summary) + '</div>';
      const rows = [];
      for (const p of op.parameters ?? []) rows.push([p.name, p.in, p.schema.type, p.required ? 'yes' : 'no', p.description]);
      const schema = op.requestBody?.content['application/json'].schema;
      if (schema) for (const [n, f] of Object.entries(schema.properties))
        rows.push([n, 'body', f.type, (schema.required ?? []).includes(n) ? 'yes' : 'no', f.description]);
      if (rows.length) html += '<table><tr><th>name</th><th>in</th><th>type</th><th>required</th><th></th></tr>' +
        rows.map(r => '<tr>' + r.map(c => '<td>' + esc(c) + '</td>').join('') + '</tr>').join('') + '</table>';
      html += '<div class="lock">responses: ' + Object.keys(op.responses).join(', ') + '</div></div>';
    }
  }
  document.getElementById('ops').innerHTML = html;
}).catch(e => { document.getElementById('info').textContent = 'could not load the API description: ' + e; });
</script></body></html>
)HTML";
}

}  // namespace dumont::api
