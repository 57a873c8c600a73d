/**
 * `convert --force` onto an image another program holds refuses before it
 * copies anything (not after the whole copy, at the final rename), and leaves
 * the held image and the directory as they were.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { nodeHost } from '../../src/storage/host.js';
import { native } from '../../src/storage/native.js';
import { tempDir } from '../helpers/tmp.js';
import { oneErrorLine, platterIn } from './cli.js';

const dir = tempDir();

describe('convert --force onto a held image', () => {
  it('refuses at once: no progress, no DST.partial, the held image untouched', async (t) => {
    if (!native.available) {
      t.skip('image locks need the native addon');
      return;
    }
    const src = join(dir, 'src.raw');
    writeFileSync(src, randomBytes(8 << 20));
    const dst = join(dir, 'held.raw');
    writeFileSync(dst, Buffer.alloc(1 << 20, 0x5a));
    // An open for writing holds QEMU's exclusive lock bytes (OFD locks: another
    // process sees the conflict as qemu would).
    const holder = await nodeHost.open(dst, { write: true });
    try {
      const r = platterIn(dir, ['convert', '--progress=json', '-O', 'raw', '--force', 'src.raw', 'held.raw']);
      // One stderr line: the error. A copy that had started would have printed progress first.
      assert.match(oneErrorLine(r), /held\.raw: is in use by another process/);
      assert.equal(existsSync(`${dst}.partial`), false, 'no partial file');
      assert.ok(
        readFileSync(dst).every((b) => b === 0x5a),
        'the held image is untouched',
      );
    } finally {
      await holder.close();
    }
    // Once it is let go, the same command replaces it.
    const ok = platterIn(dir, ['convert', '-O', 'raw', '--force', 'src.raw', 'held.raw']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.deepEqual(readFileSync(dst), readFileSync(src));
  });
});
