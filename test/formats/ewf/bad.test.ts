/** Malformed E01s: hand-built ones for each rule, and seeded mutations of ewfacquire-made sets. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { deflateSync } from 'node:zlib';
import { PlatterError } from '../../../src/core/errors.js';
import { adler32 } from '../../../src/formats/ewf/adler32.js';
import { descriptor, fileHeader, hashSection, table, volume } from '../../../src/formats/ewf/layout.js';
import { needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { ewfacquire, openRo, readAll } from './helpers.js';

const dir = tempDir('platter-ewf-bad-');

/** A one-segment E01 built by hand: header text, 4 chunks of 32 KiB (chunk 1 compressed). */
function build(
  o: { headerText?: string; entry?: (i: number, e: number) => number; chunk1?: Uint8Array } = {},
): {
  bytes: Buffer;
  data: Buffer;
} {
  const cs = 32768;
  const data = randomBytes(4 * cs);
  data.fill(7, cs, 2 * cs);
  const parts: Uint8Array[] = [fileHeader(1)];
  let pos = 13;
  const section = (type: string, body: Uint8Array): number => {
    const at = pos;
    const size = 76 + body.length;
    parts.push(descriptor(type, at + size, size), body);
    pos += size;
    return at;
  };
  const text =
    o.headerText ??
    '1\r\nmain\r\nc\tn\ta\te\tt\tm\tu\tp\r\ncase\tev\tdesc\tex\tnotes\t2026 1 2 3 4 5\t2026 1 2 3 4 5\t0\r\n\r\n';
  section('header', deflateSync(Buffer.from(text, 'latin1')));
  section(
    'volume',
    volume({
      mediaType: 1,
      chunkCount: 4,
      sectorsPerChunk: 64,
      bytesPerSector: 512,
      sectorCount: 256,
      mediaFlags: 1,
      guid: randomBytes(16),
    }),
  );
  const chunks: Uint8Array[] = [];
  const flags: boolean[] = [];
  for (let i = 0; i < 4; i++) {
    const c = data.subarray(i * cs, (i + 1) * cs);
    if (i === 1) {
      chunks.push(o.chunk1 ?? deflateSync(c));
      flags.push(true);
    } else {
      const b = Buffer.alloc(cs + 4);
      c.copy(b);
      b.writeUInt32LE(adler32(c), cs);
      chunks.push(b);
      flags.push(false);
    }
  }
  const sectorsAt = section('sectors', Buffer.concat(chunks));
  const entries = new Uint32Array(4);
  let rel = 76;
  for (let i = 0; i < 4; i++) {
    const e = (rel | (flags[i] ? 0x80000000 : 0)) >>> 0;
    entries[i] = o.entry ? o.entry(i, e) >>> 0 : e;
    rel += chunks[i].length;
  }
  section('table', table(sectorsAt, entries));
  section('table2', table(sectorsAt, entries));
  section('hash', hashSection(Buffer.alloc(16)));
  parts.push(descriptor('done', pos, 0));
  return { bytes: Buffer.concat(parts), data };
}

async function expectCorrupt(path: string, re: RegExp): Promise<void> {
  await assert.rejects(
    async () => {
      const d = await openRo(path, 'ewf');
      try {
        await readAll(d);
      } finally {
        await d.close();
      }
    },
    (e: unknown) => {
      assert.ok(e instanceof PlatterError, `a PlatterError, got ${e}`);
      assert.match(e.message, re);
      return true;
    },
  );
}

describe('ewf: bad input', () => {
  it('the hand-built image itself reads back', async () => {
    const { bytes, data } = build();
    const p = join(dir, 'good.E01');
    writeFileSync(p, bytes);
    const d = await openRo(p);
    assert.ok((await readAll(d)).equals(data));
    assert.equal(
      ((await d.info()).details as { caseMetadata: { caseNumber: string } }).caseMetadata.caseNumber,
      'case',
    );
    await d.close();
  });

  it('a section pointing outside its file', async () => {
    const { bytes } = build();
    const p = join(dir, 'outside.E01');
    // the volume descriptor follows the header section; make its size run past the end
    const at = bytes.indexOf(Buffer.from('volume\0'));
    bytes.writeBigUInt64LE(BigInt(bytes.length + 1000), at + 16);
    bytes.writeBigUInt64LE(BigInt(bytes.length + 1000 - at), at + 24);
    bytes.writeUInt32LE(adler32(bytes.subarray(at, at + 72)), at + 72);
    writeFileSync(p, bytes);
    await expectCorrupt(
      p,
      /outside\.E01: corrupt image: section 'volume' at offset \d+: ends at \d+, past the end of the file/,
    );
  });

  it('a section descriptor with a bad checksum', async () => {
    const { bytes } = build();
    const p = join(dir, 'cksum.E01');
    bytes[13 + 20] ^= 1;
    writeFileSync(p, bytes);
    await expectCorrupt(p, /section descriptor at offset 13: Adler-32 checksum/);
  });

  it('a table entry with an impossible offset (table and table2 alike)', async () => {
    const { bytes } = build({ entry: (i, e) => (i === 2 ? 0x7fff0000 : e) });
    const p = join(dir, 'offset.E01');
    writeFileSync(p, bytes);
    await expectCorrupt(
      p,
      /section 'table' at offset \d+: entry 1 \(chunk 1\): chunk at \d+ ends at \d+|entry 2 \(chunk 2\): chunk offset \d+ is outside its data area/,
    );
  });

  it('a damaged table is read from table2', async () => {
    const { bytes, data } = build();
    const at = bytes.indexOf(Buffer.from('table\0'));
    bytes[at + 76 + 24 + 1] ^= 0xff; // an entry: the entries' checksum no longer matches
    const p = join(dir, 'table2.E01');
    writeFileSync(p, bytes);
    const d = await openRo(p);
    assert.ok((await readAll(d)).equals(data));
    await d.close();
  });

  it('a compressed chunk that does not inflate names segment, section and chunk', async () => {
    const bad = Buffer.from(deflateSync(Buffer.alloc(32768, 7)));
    bad[bad.length - 2] ^= 0x55; // the zlib Adler-32 trailer
    const { bytes } = build({ chunk1: bad });
    const p = join(dir, 'inflate.E01');
    writeFileSync(p, bytes);
    await expectCorrupt(
      p,
      /inflate\.E01: corrupt image: chunk 1 \(media offset 32768\) at file offset \d+ in section 'sectors' at offset \d+: compressed data does not inflate/,
    );
  });

  it('header text that is not what the spec says', async () => {
    for (const [name, text] of [
      ['nocount', 'main\nc\tn\nx\ty\n'],
      ['nomain', '1\r\nother\r\nc\r\nx\r\n'],
      ['toomany', '1\nmain\nc\tn\na\tb\tc\td\te\n'],
    ]) {
      const p = join(dir, `hdr-${name}.E01`);
      writeFileSync(p, build({ headerText: text }).bytes);
      await expectCorrupt(p, /header section at offset 13/);
    }
  });

  it('truncated at every section boundary and mid-section', async () => {
    const { bytes } = build();
    for (const cut of [12, 13, 50, 89, 400, 1000, 1300, bytes.length - 76, bytes.length - 1]) {
      const p = join(dir, `cut${cut}.E01`);
      writeFileSync(p, bytes.subarray(0, cut));
      await expectCorrupt(p, /corrupt image|too short/);
    }
  });

  it('seeded mutations of ewfacquire-made sets: success or a PlatterError, never a crash or hang', async (t) => {
    if (!needPeers(t, 'ewfacquire')) return;
    const src = join(dir, 'm.raw');
    const raw = Buffer.concat([
      randomBytes(300 << 10),
      Buffer.alloc(300 << 10),
      Buffer.alloc(200 << 10, 'ab'),
    ]);
    writeFileSync(src, raw);
    const sets: Array<{ files: Buffer[]; ext: string[] }> = [];
    for (const [i, args] of [
      ['-f', 'encase6', '-c', 'fast', '-S', '1M'],
      ['-f', 'encase5', '-c', 'none', '-S', '1M'],
      ['-f', 'ewf', '-c', 'best', '-S', '1M'],
    ].entries()) {
      const base = join(dir, `orig${i}`);
      ewfacquire(src, base, [...args, '-b', '16']);
      const names = readdirSync(dir)
        .filter((f) => f.startsWith(`orig${i}.`))
        .sort();
      sets.push({
        files: names.map((f) => readFileSync(join(dir, f))),
        ext: names.map((f) => f.slice(f.lastIndexOf('.'))),
      });
    }
    let seed = 0x2545f491;
    const rnd = (n: number): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const outcomes = { ok: 0, error: 0 };
    for (let iter = 0; iter < 120; iter++) {
      const set = sets[iter % sets.length];
      const files: Buffer[] = set.files.map((b) => Buffer.from(b));
      const f = rnd(files.length);
      const b = files[f];
      const kind = rnd(10);
      let mutated: Buffer = b as Buffer;
      if (kind === 0) mutated = b.subarray(0, rnd(b.length));
      else {
        // mostly metadata: the first 2 KiB and the last 2 KiB (tables, hashes, done)
        for (let k = 1 + rnd(4); k > 0; k--) {
          const region = rnd(3);
          const at =
            region === 0
              ? rnd(Math.min(2048, b.length))
              : region === 1
                ? b.length - 1 - rnd(Math.min(2048, b.length))
                : rnd(b.length);
          b[at] ^= 1 << rnd(8);
        }
      }
      files[f] = mutated;
      const base = join(dir, `mut${iter}`);
      const paths = files.map((x, i) => {
        const p = base + set.ext[i];
        writeFileSync(p, x);
        return p;
      });
      try {
        const timeout = new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error(`mutation ${iter} hung`)), 20000).unref(),
        );
        await Promise.race([
          (async () => {
            const d = await openRo(paths[0], 'ewf');
            try {
              await readAll(d);
              await d.info();
            } finally {
              await d.close();
            }
          })(),
          timeout,
        ]);
        outcomes.ok++;
      } catch (e) {
        if (!(e instanceof PlatterError))
          throw new Error(`mutation ${iter} (file ${f}): not a PlatterError: ${(e as Error)?.stack ?? e}`);
        outcomes.error++;
      } finally {
        for (const p of paths) rmSync(p, { force: true });
      }
    }
    assert.ok(outcomes.error > 30, `most mutations are detected (${JSON.stringify(outcomes)})`);
  });
});
