// Managed by platform-provision. pm2 runs the processes the current release declares in
// its platform.json (the app contract, model/app_contract.py), read at every start and
// reload: a process added or removed is a deploy. A release without the file runs the
// default (web/ and api/). All in cluster mode; `pm2 reload` replaces workers one by one,
// each new one first saying "ready".
'use strict';

const fs = require('node:fs');

const release = '{{ c.CURRENT_RELEASE_LINK }}';
const logs = '{{ c.PM2_LOG_DIR }}';
// The port of the process that serves each route: the app server's nginx sends it there.
const ports = {{ facts.ROUTE_PORTS_JSON }};
const fallback = {{ facts.DEFAULT_CONTRACT_JSON }};

function contract() {
  try {
    return JSON.parse(fs.readFileSync(`${release}/{{ facts.CONTRACT_FILE }}`, 'utf8'));
  } catch (err) {
    if (err.code === 'ENOENT') return fallback;
    throw new Error(`${release}/{{ facts.CONTRACT_FILE }}: ${err.message}`);
  }
}

const app = (name, spec) => ({
  name,
  cwd: release,
  script: `${release}/${spec.script}`,
  exec_mode: 'cluster',
  instances: spec.instances ?? (spec.serves ? 'max' : 1),
  // Zero-downtime reloads: wait for process.send('ready'), give up after listen_timeout;
  // on stop, SIGINT first and SIGKILL only after kill_timeout.
  wait_ready: true,
  listen_timeout: {{ c.PM2_READY_TIMEOUT_MS }},
  kill_timeout: {{ c.PM2_KILL_TIMEOUT_MS }},
  max_memory_restart: '300M',
  env: {
    NODE_ENV: 'production',
    PLATFORM_ENV_FILE: '{{ c.APP_ENV_FILE }}',
    ...(spec.serves ? { PORT: String(ports[spec.serves]) } : {}),
  },
  out_file: `${logs}/${name}.out.log`,
  error_file: `${logs}/${name}.error.log`,
  merge_logs: true,
  time: true,
});

module.exports = {
  apps: Object.entries(contract().processes).map(([name, spec]) => app(name, spec)),
};
