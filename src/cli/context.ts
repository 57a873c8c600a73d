/** What a command gets from the shell: the host, output streams, and the stop signal. */
import type { Host } from '../core/storage.js';

export interface CliContext {
  host: Host;
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  /** Fires on SIGINT/SIGTERM: long operations stop and leave a visibly incomplete result. */
  signal: AbortSignal;
}

/** A command's action resolves to its exit status. */
export type CommandAction = (...args: never[]) => Promise<number>;
