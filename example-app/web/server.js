'use strict';
// The example web app: one page that says which server answered.
const os = require('node:os');
const { loadEnvFile } = require('../lib/env');
const { serve } = require('../lib/serve');

loadEnvFile();

const escape = (s) => String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

function page() {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>node-platform example</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>It works</h1>
<p>Served by <strong id="host">${escape(os.hostname())}</strong> (process ${process.pid}).</p>
<form id="note"><input name="text" placeholder="a note" required> <button>Save</button></form>
<pre id="notes"></pre>
<script>
const show = async () => {
  const r = await fetch('/api/notes');
  document.getElementById('notes').textContent = JSON.stringify(await r.json(), null, 2);
};
document.getElementById('note').onsubmit = async (event) => {
  event.preventDefault();
  await fetch('/api/notes', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text: event.target.text.value }) });
  show();
};
show();
</script>
</body></html>
`;
}

serve('web', Number(process.env.PORT || 3000), (req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD' });
    return res.end();
  }
  const body = page();
  res.writeHead(200, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-served-by': os.hostname(),
  });
  return res.end(req.method === 'HEAD' ? undefined : body);
});
