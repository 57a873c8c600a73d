/** Starting and stopping NBD servers in tests: platter's (in process or the CLI) and the peers'. */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { Disk } from '../../src/core/disk.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import { PLATTER } from '../helpers/peers.js';

let counter = 0;
export function socketPath(dir: string): string {
  return join(dir, `s${process.pid}-${counter++}.sock`);
}

/** Serves a Disk from this process on a unix socket in `dir`. */
export async function serveDisk(
  disk: Disk,
  dir: string,
  opts: NbdServerOptions = {},
): Promise<{ uri: string; server: NbdServer; stop: () => Promise<void> }> {
  const server = new NbdServer(disk, opts);
  const uri = await server.listen({ path: socketPath(dir) });
  return { uri, server, stop: () => server.close() };
}

export interface Child {
  proc: ChildProcess;
  /** The first line the child printed on stdout. */
  line: string;
  stderr: () => string;
  /** SIGTERM (or `sig`), then the exit code. */
  stop: (sig?: NodeJS.Signals) => Promise<number | null>;
}

/** Spawns a long-running command and waits for its first stdout line (or for `ready()`). */
export async function startChild(
  cmd: string,
  args: string[],
  opts: { ready?: () => boolean; timeoutMs?: number } = {},
): Promise<Child> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => {
    out += d;
  });
  proc.stderr!.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  const deadline = Date.now() + (opts.timeoutMs ?? 15000);
  for (;;) {
    if (opts.ready ? opts.ready() : out.includes('\n')) break;
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`${cmd} ${args.join(' ')} exited ${proc.exitCode}: ${err.trim()}`);
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`${cmd} did not become ready: ${err.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc,
    line: out.split('\n')[0],
    stderr: () => err,
    async stop(sig = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
      const t = setTimeout(() => proc.kill('SIGKILL'), 10000);
      const code = await exited;
      clearTimeout(t);
      return code;
    },
  };
}

/** `platter serve ARGS`, resolved once it prints its URI. */
export function startServe(args: string[]): Promise<Child> {
  return startChild(process.execPath, [PLATTER, 'serve', ...args]);
}

/** Waits until a unix socket accepts connections (the file exists between bind and listen). */
async function connectable(child: Child, sock: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(sock);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  await child.stop('SIGKILL');
  throw new Error(`${sock}: never accepted a connection: ${child.stderr()}`);
}

/** qemu-nbd on a unix socket (persistent), resolved once it accepts connections. */
export async function startQemuNbd(sock: string, args: string[]): Promise<Child & { uri: string }> {
  const c = await startChild('qemu-nbd', ['-k', sock, '-t', ...args], { ready: () => existsSync(sock) });
  await connectable(c, sock);
  return { ...c, uri: `nbd+unix:///?socket=${sock}` };
}

/** nbdkit in the foreground on a unix socket, resolved once it accepts connections. */
export async function startNbdkit(sock: string, args: string[]): Promise<Child & { uri: string }> {
  const c = await startChild('nbdkit', ['-f', '-U', sock, ...args], { ready: () => existsSync(sock) });
  await connectable(c, sock);
  return { ...c, uri: `nbd+unix:///?socket=${sock}` };
}

export interface AsyncResult {
  status: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a peer without blocking the event loop (an in-process server must keep
 * answering it); never rejects for a non-zero exit.
 */
export function runAsync(cmd: string, args: string[], timeoutMs = 60000): Promise<AsyncResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d) => {
      stdout += d;
    });
    p.stderr!.on('data', (d) => {
      stderr += d;
    });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('error', reject);
    p.once('close', (code, sig) => {
      clearTimeout(t);
      resolve({ status: code ?? (sig ? 128 : -1), stdout, stderr });
    });
  });
}

export async function mustAsync(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await runAsync(cmd, args, timeoutMs);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}
