'use strict';
// The example web app: one page, which names the server that answered only when the
// app setting SHOW_SERVER_NAME is "true" (staging sets it to watch the LB take turns;
// by default no answer carries an internal host name).
const os = require('node:os');
const { loadEnvFile } = require('../lib/env');
const { serve } = require('../lib/serve');

loadEnvFile();

const serverName = process.env.SHOW_SERVER_NAME === 'true' ? os.hostname() : null;
const escape = (s) => String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

function page() {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>node-platform example</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>It works</h1>
${serverName ? `<p>Served by <strong id="host">${escape(serverName)}</strong> (process ${process.pid}).</p>\n` : ''}<form id="note"><input name="text" placeholder="a note" required> <button>Save</button></form>
<pre id="notes"></pre>
<form id="job"><input name="text" placeholder="a job for the worker" required> <button>Queue</button></form>
<pre id="jobs"></pre>
<script>
const show = async (what) => {
  const r = await fetch('/api/' + what);
  document.getElementById(what).textContent = JSON.stringify(await r.json(), null, 2);
};
const post = (form, what) => {
  form.onsubmit = async (event) => {
    event.preventDefault();
    await fetch('/api/' + what, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: form.text.value }) });
    show(what);
    if (what === 'jobs') setTimeout(() => show('jobs'), 1500);   // the worker's turn
  };
  show(what);
};
post(document.getElementById('note'), 'notes');
post(document.getElementById('job'), 'jobs');
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
  const headers = { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(body) };
  if (serverName) headers['x-served-by'] = serverName;
  res.writeHead(200, headers);
  return res.end(req.method === 'HEAD' ? undefined : body);
});
