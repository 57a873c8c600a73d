/** A peer (qemu-io, qemu-nbd) holding an image open, as a lock holder for the locking tests. */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { native, WRITE_LOCK } from '../../src/storage/native.js';
import { stopChild, waitFor } from './wait.js';

/**
 * Spawns a long-lived peer and resolves once it has locked byte 100 of `path`
 * (QEMU's write-permission byte). The peer must run until stopped: for qemu-io
 * pass a `sleep` far longer than any test (it is stopped, not waited for).
 */
export async function holdWith(cmd: string, args: string[], path: string): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  const fd = openSync(path, 'r');
  try {
    await waitFor(`${cmd} locking ${path}`, () => native.ofdTest(fd, WRITE_LOCK, 100, 1) !== null, {
      child,
      stderr: () => stderr,
    });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  } finally {
    closeSync(fd);
  }
  return child;
}

/** qemu-io arguments that hold `path` (raw) writable until stopped. */
export const qemuIoHold = (path: string): string[] => ['-f', 'raw', '-c', 'sleep 3600000', path];

export const stop = (child: ChildProcess): Promise<void> => stopChild(child);
