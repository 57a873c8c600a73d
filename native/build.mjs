// Builds the native addon (native/build/Release/platter.node) with node-gyp,
// offline, against the headers of the Node.js that runs this script. Run by
// `npm ci` / `npm install` (package.json "install"). A failure is not fatal:
// src/storage/native.ts falls back to pure JavaScript (no holes, no locks).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

const here = dirname(new URL(import.meta.url).pathname);
// Headers: npm's configured nodedir, else the prefix of the running node.
const nodedir = [process.env.npm_config_nodedir, join(dirname(process.execPath), '..')].find(
  (d) => d && existsSync(join(d, 'include', 'node', 'node_api.h')),
);
const headers = nodedir ? join(nodedir, 'include', 'node', 'node_api.h') : '';

function nodeGyp() {
  const prefix = join(dirname(process.execPath), '..');
  if (process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp)) {
    return [process.execPath, process.env.npm_config_node_gyp];
  }
  // npm's own copy, next to the node binary (global install layout).
  for (const p of [
    join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    join(dirname(process.execPath), 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ]) {
    if (existsSync(p)) return [process.execPath, p];
  }
  return ['node-gyp'];
}

function fail(why) {
  console.warn(`platter: native addon not built (${why}); using the pure-JavaScript fallbacks`);
  process.exit(0);
}

if (process.platform !== 'linux') fail(`platform ${process.platform}`);
const args = ['rebuild', `--directory=${here}`, '--loglevel=warn'];
// Offline: use the installed headers instead of downloading them.
if (headers) args.push(`--nodedir=${nodedir}`);
const [cmd, ...pre] = nodeGyp();
const env = { ...process.env };
if (headers) env.npm_config_nodedir = nodedir; // node-gyp lets the environment override --nodedir
const r = spawnSync(cmd, [...pre, ...args], { stdio: 'inherit', env });
if (r.error) fail(r.error.message);
if (r.status !== 0) fail(`node-gyp exited ${r.status}`);
