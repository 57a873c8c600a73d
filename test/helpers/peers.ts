/**
 * Running the independent peers (qemu-img, nbdkit, ewf-tools, ...). A missing
 * peer skips the test loudly on a developer's machine and fails it under CI,
 * where .ci/run installs every peer.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

const found = new Map<string, boolean>();

export function hasPeer(cmd: string): boolean {
  let ok = found.get(cmd);
  if (ok === undefined) {
    ok = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).status === 0;
    found.set(cmd, ok);
  }
  return ok;
}

/** Call at the top of a test: returns false (and skips) when a peer is missing outside CI. */
export function needPeers(t: TestContext, ...cmds: string[]): boolean {
  const missing = cmds.filter((c) => !hasPeer(c));
  if (missing.length === 0) return true;
  const msg = `PEER MISSING: ${missing.join(', ')} (install with .ci/run)`;
  if (process.env.CI) throw new Error(msg);
  console.warn(msg);
  t.skip(msg);
  return false;
}

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

/** Runs a command synchronously; never throws for a non-zero exit (the test asserts). */
export function run(
  cmd: string,
  args: string[],
  opts: { input?: string | Uint8Array; cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {},
): RunResult {
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    input: opts.input,
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    timeout: opts.timeout ?? 120_000,
    maxBuffer: 256 << 20,
  });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command and throws with its stderr if it fails. */
export function must(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): string {
  const r = run(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

export const PLATTER = join(new URL('../..', import.meta.url).pathname, 'bin/platter');

/** Runs bin/platter (the built CLI). */
export function platter(args: string[], opts: Parameters<typeof run>[2] = {}): RunResult {
  return run(process.execPath, [PLATTER, ...args], opts);
}

export const qemuImg = (args: string[]): string => must('qemu-img', args);
export const qemuIo = (args: string[]): string => must('qemu-io', args);
