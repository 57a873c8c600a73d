/** core/random: random bytes from the installed source, version 4 UUIDs in both byte orders. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { newUuid, randomBytes, setRandomSource } from '../../src/core/random.js';
import { readUrandom } from '../../src/storage/fs-calls.js';

describe('random ids', () => {
  it('randomBytes gives the length asked for, different each time, from Web Crypto or the installed source', () => {
    for (const source of ['default', 'urandom'] as const) {
      if (source === 'urandom') setRandomSource(readUrandom);
      const a = randomBytes(64);
      const b = randomBytes(64);
      assert.equal(a.length, 64);
      assert.notDeepEqual(a, b, source);
      assert.equal(randomBytes(0).length, 0);
    }
    setRandomSource((buf) => buf.fill(0xab));
    assert.deepEqual(
      randomBytes(3),
      new Uint8Array([0xab, 0xab, 0xab]),
      'the installed source is the one used',
    );
    setRandomSource(readUrandom);
  });

  it('newUuid sets version 4 and the RFC 4122 variant where each byte order keeps them', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const rfc = newUuid('rfc');
      const guid = newUuid('guid');
      assert.equal(rfc[6] >> 4, 4, 'RFC order: version in byte 6');
      assert.equal(guid[7] >> 4, 4, 'GUID order: version in byte 7 (Data3 little-endian)');
      for (const u of [rfc, guid]) {
        assert.equal(u[8] >> 6, 2, 'variant 10b');
        seen.add(Buffer.from(u).toString('hex'));
      }
    }
    assert.equal(seen.size, 400, 'no repeats');
  });
});
