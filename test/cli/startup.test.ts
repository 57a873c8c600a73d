/**
 * Start-up: the command line loads the Node.js modules that only some commands
 * need (sockets, hashing, compression, workers, child processes) on first use
 * (scripts/build.mjs, LAZY), so that `platter info` does not pay for them.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { BIN } from './cli.js';

const dir = tempDir('platter-startup-');
// node:net is lazy too, but not here: Node.js makes stdio pipes (these tests' own) net sockets.
const LAZY = ['child_process', 'crypto', 'worker_threads', 'zlib'];

// Prints, at exit, which of the lazy modules the process loaded.
const probe = join(dir, 'probe.cjs');
writeFileSync(
  probe,
  `const lazy = ${JSON.stringify(LAZY)};
process.on('exit', () => {
  const loaded = lazy.filter((m) => process.moduleLoadList.includes('NativeModule ' + m));
  process.stderr.write('LOADED ' + JSON.stringify(loaded) + '\\n');
});
`,
);

function loadedBy(args: string[]): string[] {
  const r = run(process.execPath, ['--require', probe, BIN, ...args], { cwd: dir });
  assert.equal(r.status, 0, r.stderr);
  const line = r.stderr.split('\n').find((l) => l.startsWith('LOADED '));
  assert.ok(line, r.stderr);
  return JSON.parse(line.slice('LOADED '.length));
}

describe('start-up', () => {
  it('--version, create and info load none of the modules kept for later', () => {
    assert.deepEqual(loadedBy(['--version']), []);
    assert.deepEqual(loadedBy(['create', '-f', 'qcow2', 'a.qcow2', '1M']), []);
    assert.deepEqual(loadedBy(['info', 'a.qcow2']), []);
  });

  it('the V8 flags bin/platter sets at run time survive a run that collects a large heap', () => {
    // `create` sets them; a 64 TiB VDI's block map is 256 MiB. With the whole
    // --single-threaded-gc set at run time, V8 aborted here (exit 133, "Check
    // failed: concurrent_marking_handle_") in 5 runs out of 5.
    for (let i = 0; i < 2; i++) {
      const r = run(process.execPath, [BIN, 'create', '-q', '--force', '-f', 'vdi', 'big.vdi', '64T'], {
        cwd: dir,
      });
      assert.equal(r.status, 0, r.stderr.slice(0, 400));
      assert.equal(r.stderr, '');
    }
  });

  it('a command that needs one loads it when it is used', () => {
    writeFileSync(join(dir, 'b.raw'), Buffer.alloc(65536, 7));
    assert.ok(loadedBy(['convert', '-c', '-O', 'qcow2', 'b.raw', 'b.qcow2']).includes('zlib'));
    assert.ok(loadedBy(['hash', 'b.raw']).includes('crypto'));
  });
});
