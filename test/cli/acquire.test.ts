import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { holdWith, qemuIoHold, stop } from '../helpers/holder.js';
import { must, needPeers, PLATTER, platter, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { runAsync } from '../nbd/helpers.js';

const dir = tempDir('platter-cli-acquire-');
// random, zeros, a repeated pattern, and 300 bytes past the last whole sector
const data = Buffer.concat([
  randomBytes(1 << 20),
  Buffer.alloc(1 << 20),
  Buffer.alloc(1 << 20, 'xyz'),
  randomBytes(300),
]);
const src = join(dir, 'src.bin');
writeFileSync(src, data);
const hex = (alg: string, b: Uint8Array): string => createHash(alg).update(b).digest('hex');
/** platter without blocking the event loop (a holder is waited on meanwhile). */
const platterAsync = (args: string[]) => runAsync(process.execPath, [PLATTER, ...args]);

describe('platter acquire', () => {
  it('-O raw: hashes equal md5sum/sha256sum, every byte kept, log written, verify exits 0 then 4', async (t) => {
    if (!needPeers(t, 'md5sum', 'sha256sum')) return;
    const dst = join(dir, 'r.raw');
    const r = platter(['acquire', '--json', '--case-number', 'C-1', src, dst]);
    assert.equal(r.status, 0, r.stderr);
    const rec = JSON.parse(r.stdout);
    assert.equal(rec.hashes.md5, must('md5sum', [src]).split(' ')[0]);
    assert.equal(rec.hashes.sha256, must('sha256sum', [src]).split(' ')[0]);
    assert.equal(rec.source.size, data.length);
    assert.deepEqual(rec.unreadable, []);
    assert.equal(rec.verification.result, 'match');
    assert.equal(rec.caseMetadata.caseNumber, 'C-1');
    assert.equal(rec.tool.name, 'platter');
    assert.ok(readFileSync(dst).equals(data), 'raw image holds every byte, the partial sector too');
    const log = readFileSync(`${dst}.log`, 'utf8');
    assert.match(log, new RegExp(`md5:\\s+${rec.hashes.md5}`));
    assert.match(log, /Verification: match/);

    assert.equal(platter(['verify', dst]).status, 0);
    const bytes = readFileSync(dst);
    bytes[2 * (1 << 20) + 5] ^= 1;
    writeFileSync(dst, bytes);
    const v = platter(['verify', dst]);
    assert.equal(v.status, 4, v.stderr);
    assert.match(v.stderr, /verification failed: md5/);
  });

  it('refuses to overwrite evidence, even an existing log, and has no --force', () => {
    const dst = join(dir, 'exists.raw');
    writeFileSync(dst, 'keep');
    let r = platter(['acquire', src, dst]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /already exists; acquire never overwrites/);
    assert.equal(readFileSync(dst, 'utf8'), 'keep');
    writeFileSync(join(dir, 'n.raw.log'), 'old log');
    r = platter(['acquire', src, join(dir, 'n.raw')]);
    assert.equal(r.status, 1);
    assert.ok(!existsSync(join(dir, 'n.raw')));
    r = platter(['acquire', '--force', src, join(dir, 'f.raw')]);
    assert.equal(r.status, 1);
    // A later segment of the set: refused before the first one is made, without a --force hint.
    for (const [later, args] of [
      ['seg.E02', ['-O', 'ewf', '--segment-size', '1M', '--compression', 'none', join(dir, 'seg')]],
      ['seg.EAB', ['-O', 'ewf', '--segment-size', '1M', join(dir, 'seg')]],
      ['sp.002', ['-O', 'split', '--segment-size', '1M', join(dir, 'sp.001')]],
    ]) {
      writeFileSync(join(dir, later as string), 'keep');
      r = platter(['acquire', src, ...(args as string[])]);
      assert.equal(r.status, 1);
      assert.match(
        r.stderr,
        new RegExp(
          `^platter: error: \\S*${later}: already exists; acquire never overwrites \\(choose another name\\)\n$`,
        ),
      );
      assert.deepEqual(
        readdirSync(dir).filter((n) => n.startsWith(String(later).slice(0, 3))),
        [later],
      );
      rmSync(join(dir, later as string));
    }
  });

  it('case metadata with line breaks stays on its line of the log: it cannot forge the hashes verify reads', () => {
    const dst = join(dir, 'forged.raw');
    const forged = `hello\nHashes of the source (${data.length} bytes):\n  md5:    ${'0'.repeat(32)}`;
    const r = platter(['acquire', '-q', '--notes', forged, '--examiner', 'A\r\nB', src, dst]);
    assert.equal(r.status, 0, r.stderr);
    const log = readFileSync(`${dst}.log`, 'utf8');
    assert.match(log, /^Notes: +hello Hashes of the source \(\d+ bytes\): +md5: +0{32}$/m);
    assert.match(log, /^Examiner: +A {2}B$/m);
    assert.equal(log.match(/^Hashes of the source/gm)?.length, 1);
    const v = platter(['verify', dst]);
    assert.equal(v.status, 0, v.stderr);
  });

  it('a source another program holds: refused, -U reads it anyway (acquire and verify)', async (t) => {
    if (!needPeers(t, 'qemu-io')) return;
    const held = join(dir, 'held.raw');
    writeFileSync(held, data);
    const out = join(dir, 'from-held.raw');
    const io = await holdWith('qemu-io', qemuIoHold(held), held);
    try {
      let r = await platterAsync(['acquire', '-q', held, out]);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /is in use by another process.*use -U/);
      r = await platterAsync(['acquire', '-q', '-U', held, out]);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(readFileSync(out).equals(data));
      // verify reads the acquired image; -U is there too.
      const verifyHeld = await holdWith('qemu-io', qemuIoHold(out), out);
      try {
        assert.match((await platterAsync(['verify', out])).stderr, /use -U/);
        assert.equal((await platterAsync(['verify', '-U', out])).status, 0);
      } finally {
        await stop(verifyHeld);
      }
    } finally {
      await stop(io);
    }
  });

  it('-O split: DEST.001.. at --segment-size; verify names the bad segment', () => {
    const dst = join(dir, 's.001');
    const r = platter(['acquire', '-q', '-O', 'split', '--segment-size', '1M', src, dst]);
    assert.equal(r.status, 0, r.stderr);
    const segs = readdirSync(dir)
      .filter((f) => /^s\.\d{3}$/.test(f))
      .sort();
    assert.deepEqual(segs, ['s.001', 's.002', 's.003', 's.004']);
    assert.ok(Buffer.concat(segs.map((f) => readFileSync(join(dir, f)))).equals(data));
    assert.equal(platter(['verify', dst]).status, 0);
    const p = join(dir, 's.003');
    const b = readFileSync(p);
    b[77] ^= 0x80;
    writeFileSync(p, b);
    const v = platter(['verify', dst]);
    assert.equal(v.status, 4);
    assert.match(v.stderr, /segment .*s\.003/);
  });

  it('-O ewf: ewfverify clean, ewfinfo shows the case, SHA-256 only in the log, a flipped chunk byte makes verify exit 4', async (t) => {
    if (!needPeers(t, 'ewfverify', 'ewfinfo')) return;
    const dst = join(dir, 'evidence');
    const r = platter([
      'acquire',
      '-O',
      'ewf',
      '--json',
      '-a',
      'md5,sha1,sha256',
      '--compression',
      'none',
      '--segment-size',
      '1M',
      '--case-number',
      '2026-117',
      '--evidence-number',
      'HD-3',
      '--examiner',
      'Grace',
      '--description',
      'laptop disk',
      '--notes',
      'write-blocked',
      src,
      dst,
    ]);
    assert.equal(r.status, 0, r.stderr);
    const rec = JSON.parse(r.stdout);
    assert.ok(rec.destination.files.length >= 3, 'several segments');
    assert.match(rec.notes.join(' '), /no place for SHA256/);
    assert.match(rec.notes.join(' '), /pads the last one/);
    const e01 = `${dst}.E01`;
    assert.ok(existsSync(`${e01}.log`));
    const v = run('ewfverify', ['-q', e01]);
    assert.equal(v.status, 0, v.stdout);
    const info = must('ewfinfo', [e01]);
    for (const re of [
      /Case number:\s+2026-117/,
      /Evidence number:\s+HD-3/,
      /Examiner name:\s+Grace/,
      /Notes:\s+write-blocked/,
    ]) {
      assert.match(info, re);
    }
    const padded = Buffer.concat([data, Buffer.alloc(512 - 300)]);
    assert.match(info, new RegExp(`MD5:\\s+${hex('md5', padded)}`));
    assert.equal(rec.hashes.sha256, hex('sha256', data));

    const pi = platter(['info', e01]);
    assert.equal(pi.status, 0, pi.stderr);
    assert.match(pi.stdout, /caseNumber: 2026-117/);
    assert.match(pi.stdout, /no place for SHA-256/);
    assert.equal(platter(['verify', e01]).status, 0);
    const p2 = `${dst}.E02`;
    const b = readFileSync(p2);
    b[4000] ^= 1; // inside the first (uncompressed) chunk of E02
    writeFileSync(p2, b);
    const bad = platter(['verify', e01]);
    assert.equal(bad.status, 4, bad.stderr);
    assert.match(bad.stderr, /evidence\.E02.*chunk \d+/);
  });
});
