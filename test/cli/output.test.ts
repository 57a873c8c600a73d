/**
 * What the command does when its output goes away: a reader that stops early
 * (`platter map IMG | head`) ends it quietly with SIGPIPE's status, and an
 * output that cannot be written (a full disk) is one error line.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { tempDir } from '../helpers/tmp.js';
import { BIN, oneErrorLine, platterIn } from './cli.js';

const dir = tempDir();
const image = join(dir, 'many-extents.raw');
// One data block every 8 KiB over 32 MiB: 4096 data extents, a map far larger
// than a pipe's buffer (64 KiB), so the command is still writing when the reader goes.
{
  const fd = openSync(image, 'w');
  const one = new Uint8Array([1]);
  for (let off = 0; off < 32 << 20; off += 8192) writeSync(fd, one, 0, 1, off);
  closeSync(fd);
}

describe('output that goes away', () => {
  it('a reader that closes the pipe early ends the command quietly (status 141)', async () => {
    const child = spawn(process.execPath, [BIN, 'map', image], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
    });
    const first = await new Promise<Buffer>((resolve) => child.stdout.once('data', resolve));
    assert.match(first.toString(), /^Offset/, 'the map had started');
    child.stdout.destroy();
    const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(stderr, '', 'no stack trace, no message');
    assert.equal(status, 141);
  });

  it('an output that cannot be written is one error line', { skip: !existsSync('/dev/full') }, () => {
    const r = platterIn(dir, ['map', image]);
    assert.equal(r.status, 0, 'the map itself works');
    const fd = openSync('/dev/full', 'w');
    try {
      const full = spawnSync(process.execPath, [BIN, 'map', image], {
        stdio: ['ignore', fd, 'pipe'],
        encoding: 'utf8',
      });
      assert.match(
        oneErrorLine({ status: full.status ?? -1, stdout: '', stderr: full.stderr }),
        /^stdout: .*no space left/i,
      );
    } finally {
      closeSync(fd);
    }
  });
});
