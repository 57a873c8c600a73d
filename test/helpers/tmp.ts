/** A fresh temporary directory per test file, removed afterwards. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';

export function tempDir(prefix = 'platter-test-'): string {
  const dir = mkdtempSync(join(process.env.PLATTER_TEST_TMP ?? tmpdir(), prefix));
  after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
