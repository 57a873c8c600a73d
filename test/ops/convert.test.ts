import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { PlatterError } from '../../src/core/errors.js';
import { convertDisk } from '../../src/ops/convert.js';
import { readAll, toyDisk } from './toy.js';

const K = 1024;

describe('convertDisk', () => {
  it('--verify: the source hashed while copied equals the destination read back', async () => {
    const src = toyDisk(4 * K * K + 512, 64 * K);
    await src.write(randomBytes(200 * K), 100 * K);
    const dst = toyDisk(src.size, 4 * K);
    const r = await convertDisk(src, dst, { verify: true });
    const want = createHash('sha256')
      .update(await readAll(src))
      .digest('hex');
    assert.deepEqual(r.verified, { algorithm: 'sha256', source: want, destination: want });
  });

  it('a destination that corrupts what it is given fails verification with EVERIFY', async () => {
    const src = toyDisk(K * K, 4 * K);
    await src.write(randomBytes(64 * K), 0);
    const dst = toyDisk(src.size, 4 * K);
    const write = dst.write.bind(dst);
    dst.write = async (buf, off) => {
      const bad = Uint8Array.from(buf);
      bad[0] ^= 1;
      return write(bad, off);
    };
    await assert.rejects(
      convertDisk(src, dst, { verify: true, verifyAlgorithm: 'md5' }),
      (e: unknown) =>
        e instanceof PlatterError && e.code === 'EVERIFY' && /md5 of the source/.test(e.message),
    );
  });

  it('a destination larger than the source is verified over the source size', async () => {
    const src = toyDisk(1000, 512);
    await src.write(Uint8Array.of(1, 2, 3), 10);
    const dst = toyDisk(1024, 512);
    const r = await convertDisk(src, dst, { verify: true });
    assert.equal(r.verified?.source, r.verified?.destination);
  });
});
