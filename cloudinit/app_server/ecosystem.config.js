// Managed by platform-provision. pm2 runs both apps of the current release in cluster
// mode; `pm2 reload` replaces workers one by one, each new one first saying "ready".
'use strict';

const release = '{{ c.CURRENT_RELEASE_LINK }}';
const logs = '{{ c.PM2_LOG_DIR }}';

const app = (name, port) => ({
  name,
  cwd: release,
  script: `${release}/${name}/server.js`,
  exec_mode: 'cluster',
  instances: 'max',
  // Zero-downtime reloads: wait for process.send('ready'), give up after listen_timeout;
  // on stop, SIGINT first and SIGKILL only after kill_timeout.
  wait_ready: true,
  listen_timeout: 10000,
  kill_timeout: 8000,
  max_memory_restart: '300M',
  env: {
    NODE_ENV: 'production',
    PORT: String(port),
    PLATFORM_ENV_FILE: '{{ c.APP_ENV_FILE }}',
  },
  out_file: `${logs}/${name}.out.log`,
  error_file: `${logs}/${name}.error.log`,
  merge_logs: true,
  time: true,
});

module.exports = {
  apps: [app('web', {{ c.WEB_APP_PORT }}), app('api', {{ c.API_APP_PORT }})],
};
