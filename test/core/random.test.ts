/** core/random: bytes from /dev/urandom, version 4 UUIDs in both byte orders. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { newUuid, randomBytes } from '../../src/core/random.js';

describe('random ids', () => {
  it('randomBytes gives the length asked for, different each time', () => {
    const a = randomBytes(64);
    const b = randomBytes(64);
    assert.equal(a.length, 64);
    assert.notDeepEqual(a, b);
    assert.equal(randomBytes(0).length, 0);
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
