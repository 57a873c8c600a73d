/**
 * Runs the platter command for the CLI tests. PLATTER_BIN may name another
 * launcher (e.g. a private build while other builds rewrite dist/).
 */
import { PLATTER, run } from '../helpers/peers.js';

export const BIN = process.env.PLATTER_BIN ?? PLATTER;

export function platterIn(
  cwd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeout?: number } = {},
) {
  return run(process.execPath, [BIN, ...args], { cwd, ...opts });
}

/** Asserts the shape of a user error: one `platter: error:` line, no stack, non-zero exit. */
export function oneErrorLine(r: { status: number; stdout: string; stderr: string }): string {
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  if (r.status === 0) throw new Error(`expected a non-zero exit, got 0 (stderr: ${r.stderr})`);
  if (lines.length !== 1 || !lines[0].startsWith('platter: error: ')) {
    throw new Error(`expected exactly one 'platter: error:' line, got:\n${r.stderr}`);
  }
  return lines[0].slice('platter: error: '.length);
}
