/**
 * Waiting for a peer process to become ready without a tight clock: a loaded
 * CI machine (2 cores, other tests running) may take seconds to start qemu-nbd
 * or nbdfuse. The wait ends when the awaited state holds, fails at once when
 * the child exits first (with its stderr), and otherwise gives up only after a
 * generous limit (so a broken peer cannot hang the run).
 */
import type { ChildProcess } from 'node:child_process';

export interface WaitOptions {
  /** The process whose readiness is awaited: its exit ends the wait with an error. */
  child?: ChildProcess;
  /** Its stderr so far, for the error message. */
  stderr?: () => string;
  /** Upper bound, only against a hang; default 60 s. */
  limitMs?: number;
}

const exited = (c: ChildProcess): boolean => c.exitCode !== null || c.signalCode !== null;

/** Resolves once `ready()` holds (checked every 20 ms). */
export async function waitFor(what: string, ready: () => boolean, opts: WaitOptions = {}): Promise<void> {
  const deadline = Date.now() + (opts.limitMs ?? 60_000);
  for (;;) {
    if (ready()) return;
    if (opts.child && exited(opts.child)) {
      // One last look: the state may have appeared just before the exit.
      if (ready()) return;
      throw new Error(
        `${what}: the process exited first (${opts.child.exitCode ?? opts.child.signalCode}): ${opts.stderr?.() ?? ''}`,
      );
    }
    if (Date.now() > deadline)
      throw new Error(`${what}: not ready after ${opts.limitMs ?? 60_000} ms: ${opts.stderr?.() ?? ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** SIGTERM (if still running) and the exit. */
export async function stopChild(child: ChildProcess, sig: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (exited(child)) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill(sig);
  await done;
}
