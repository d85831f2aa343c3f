'use strict';
// Loads the shared .env (pushed by the platform) into process.env. Values already set in
// the environment win, so a test or pm2 can override one.
const fs = require('node:fs');

function loadEnvFile(path = process.env.PLATFORM_ENV_FILE) {
  if (!path || !fs.existsSync(path)) return;
  for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
    const match = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (match && process.env[match[1]] === undefined) process.env[match[1]] = match[2];
  }
}

module.exports = { loadEnvFile };
