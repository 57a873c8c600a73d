/**
 * A source that goes away mid-run (the NBD server is killed) has no bad
 * sectors: rescue stops with its mapfile saved and the rest untried, so that a
 * resume reads it; acquire fails, leaving the evidence visibly incomplete. Both
 * went on before, calling the whole rest of the drive unreadable (acquire
 * exited 0 with an image of zeros).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { needPeers } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { waitFor } from '../helpers/wait.js';
import { runAsync, socketPath, startNbdkit } from '../nbd/helpers.js';
import { BIN, oneErrorLine } from './cli.js';

const dir = tempDir('platter-gone-');
const data = randomBytes(4 << 20);
const src = join(dir, 'src.img');
writeFileSync(src, data);

/** Runs platter against a slow nbdkit export that is killed (-9) once `started()` says the run is under way. */
async function killedMidway(args: (uri: string) => string[], started: () => boolean) {
  const sock = socketPath(dir);
  const server = await startNbdkit(sock, ['-r', '--filter=delay', 'file', `file=${src}`, 'rdelay=100ms']);
  const run = runAsync(process.execPath, [BIN, ...args(server.uri)], 60000);
  await waitFor('the run to start reading', started);
  await server.stop('SIGKILL');
  return { result: await run, uri: server.uri };
}

describe('a source that goes away', () => {
  it('rescue stops, saves the map with the rest untried, and a resume finishes the copy', async (t) => {
    if (!needPeers(t, 'nbdkit')) return;
    const out = join(dir, 'r.img');
    const map = join(dir, 'r.map');
    const rescued = () => existsSync(map) && /^0x0+ +0x[0-9A-F]+ +\+/im.test(readFileSync(map, 'latin1'));
    const { result } = await killedMidway((uri) => ['rescue', '-q', uri, out, map], rescued);
    assert.match(oneErrorLine(result), /NBD connection lost.*; mapfile saved$/);
    const text = readFileSync(map, 'latin1');
    assert.doesNotMatch(text, /^0x[0-9A-F]+ +0x[0-9A-F]+ +[-*/]$/im, `no area called bad:\n${text}`);
    assert.match(text, /^0x[0-9A-F]+ +0x[0-9A-F]+ +\?$/im, 'the rest is untried');
    // A resume from a live server reads what is left.
    const sock = socketPath(dir);
    const server = await startNbdkit(sock, ['-r', 'file', `file=${src}`]);
    try {
      const r = await runAsync(process.execPath, [BIN, 'rescue', '-q', server.uri, out, map]);
      assert.equal(r.status, 0, r.stderr);
    } finally {
      await server.stop();
    }
    assert.ok(readFileSync(out).equals(data), 'the whole source rescued');
  });

  it('acquire fails with one line naming the incomplete destination, and writes no log', async (t) => {
    if (!needPeers(t, 'nbdkit')) return;
    const out = join(dir, 'a.raw');
    const { result } = await killedMidway(
      (uri) => ['acquire', '-q', uri, out],
      () => existsSync(out),
    );
    assert.match(
      oneErrorLine(result),
      /NBD connection lost.*; .*a\.raw is incomplete \(no log was written\)$/,
    );
    assert.ok(!existsSync(`${out}.log`));
  });
});
