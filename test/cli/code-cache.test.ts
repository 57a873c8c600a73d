/** The bundle's V8 code cache (scripts/build.mjs makes it, bin/platter loads it). */
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import vm from 'node:vm';

const file = join(import.meta.dirname, '../../dist/cli/platter.cjs');

describe('code cache', () => {
  it('is newer than the bundle and V8 accepts it, wrapped as bin/platter wraps the bundle', () => {
    const cache = `${file}.cache`;
    assert.ok(
      statSync(cache).mtimeMs >= statSync(file).mtimeMs,
      'made after the bundle (bin/platter ignores an older one)',
    );
    const source = readFileSync(file, 'utf8');
    const script = new vm.Script(
      `(function (exports, require, module, __filename, __dirname) {${source}\n})`,
      {
        filename: file,
        cachedData: readFileSync(cache),
      },
    );
    assert.equal(script.cachedDataRejected, false);
  });
});
