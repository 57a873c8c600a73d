/**
 * Replies to a socket from a pool thread, with file ranges sent by sendfile(2)
 * (native/send.c): the bytes of a host file go from the page cache to the
 * socket without a copy through this process, and the main thread only queues
 * replies. The NBD server uses it for read-only exports.
 *
 * Every byte of the connection goes through one sender once it is in use
 * (replies leave whole and in the order they were queued), one work item at a
 * time per connection, and at most MAX_JOBS for the whole process, so the
 * rest of the pool stays free for reads. A work item waits for a slow reader
 * WAIT_MS at most, then gives its thread back and the connection queues again:
 * a client that stops reading cannot hold the pool.
 *
 * The sender writes to its own duplicate of the socket's descriptor: Node.js
 * may close its handle when the peer hangs up, and a work item must never
 * write to a descriptor number that was reused since.
 */
import type { Socket } from 'node:net';
import { PlatterError } from '../core/errors.js';
import type { Storage } from '../core/storage.js';
import { pageCacheFd } from './file.js';
import { native, type SocketCalls } from './native.js';

/** `length` bytes at `at` in a host file Storage. */
export interface FileRange {
  storage: Storage;
  at: number;
  length: number;
}

export type SendPart = Uint8Array | FileRange;

/** How long a work item waits for room in a full socket before it lets others run. */
const WAIT_MS = 200;
/** Send work items running at once in this process (libuv's pool has 4 threads). */
const MAX_JOBS = 4;
/** The send buffer asked for on a unix socket (see native widenSendBuffer). */
const UNIX_SEND_BUFFER = 4 * 1024 * 1024;
/** Segments per work item at most. */
const MAX_SEGMENTS = 1024;
/** Bytes per work item at most (after the first reply), so that connections take turns. */
const MAX_JOB_BYTES = 64 * 1024 * 1024;

let running = 0;
const slotWaiters: Array<() => void> = [];

async function takeSlot(): Promise<void> {
  while (running >= MAX_JOBS) await new Promise<void>((r) => slotWaiters.push(r));
  running++;
}

function giveSlot(): void {
  running--;
  slotWaiters.shift()?.();
}

interface Segment {
  /** A file descriptor, or -1 for `bytes`. */
  fd: number;
  at: number;
  length: number;
  bytes?: Uint8Array;
}

interface Reply {
  segments: Segment[];
  sent?: (err?: Error) => void;
}

export class SocketSender {
  private readonly queue: Reply[] = [];
  private pumping = false;
  private failed: Error | null = null;
  private closed = false;
  private readonly idleWaiters: Array<() => void> = [];
  /** Resolves once the bytes Node.js was still sending on this socket have left. */
  private readonly ready: Promise<void>;

  /** A sender for this socket, or undefined where there is none (no addon, no descriptor). */
  static for(socket: Socket): SocketSender | undefined {
    const calls = native.socket;
    const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
    if (!calls || typeof fd !== 'number' || fd < 0) return undefined;
    let own: number;
    try {
      own = calls.dupFd(fd);
    } catch {
      return undefined;
    }
    try {
      calls.widenSendBuffer(own, UNIX_SEND_BUFFER);
    } catch {
      // the default buffer works too
    }
    return new SocketSender(calls, own, socket);
  }

  private constructor(
    private readonly calls: SocketCalls,
    private readonly fd: number,
    socket: Socket,
  ) {
    this.ready =
      socket.writableLength === 0
        ? Promise.resolve()
        : new Promise<void>((r) => {
            socket.write(new Uint8Array(0), () => r());
          });
  }

  /** Replies queued and not yet wholly sent. */
  get queued(): number {
    return this.queue.length;
  }

  /** Whether ranges of this storage can be sent from its file. */
  canSendFrom(storage: Storage): boolean {
    return pageCacheFd(storage) !== undefined;
  }

  /**
   * Queues one reply. `sent` runs once all of it has left, or with the error
   * that ended the connection (then nothing more is sent).
   */
  send(parts: readonly SendPart[], sent?: (err?: Error) => void): void {
    if (this.failed || this.closed) {
      const err = this.failed ?? new PlatterError('ECLOSED', 'the connection is closed');
      if (sent) queueMicrotask(() => sent(err));
      return;
    }
    const segments: Segment[] = [];
    for (const p of parts) {
      if (p instanceof Uint8Array) {
        if (p.length > 0) segments.push({ fd: -1, at: 0, length: p.length, bytes: p });
      } else if (p.length > 0) {
        const fd = pageCacheFd(p.storage);
        if (fd === undefined)
          throw new PlatterError('EINVAL', `${p.storage.name}: cannot be sent from its file`);
        segments.push({ fd, at: p.at, length: p.length });
      }
    }
    this.queue.push({ segments, sent });
    void this.pump();
  }

  /** Resolves when everything queued has left or the connection failed. */
  idle(): Promise<void> {
    if (!this.pumping && this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /** Ends the connection at once (a waiting work item returns); queued replies fail. */
  abort(): void {
    if (this.closed) return;
    try {
      this.calls.shutdownFd(this.fd);
    } catch {
      // already gone
    }
  }

  /** Closes the sender's descriptor once its work item is done (call after idle() or abort()). */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.idle();
    if (this.closed) return;
    this.closed = true;
    this.calls.closeFd(this.fd);
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      await this.ready;
      while (this.queue.length > 0 && !this.failed) {
        await takeSlot();
        let sent = 0;
        try {
          const { buffers, triples, count } = this.encode();
          sent = await this.calls.sendSpans(this.fd, buffers, triples, WAIT_MS);
          this.advance(sent, count);
        } catch (e) {
          this.fail(e);
        } finally {
          giveSlot();
        }
      }
    } finally {
      this.pumping = false;
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** The first replies of the queue as one work item's arguments. */
  private encode(): { buffers: Uint8Array[]; triples: Float64Array; count: number } {
    const buffers: Uint8Array[] = [];
    const flat: number[] = [];
    let count = 0;
    let bytes = 0;
    for (const r of this.queue) {
      if (count > 0 && (flat.length / 3 + r.segments.length > MAX_SEGMENTS || bytes >= MAX_JOB_BYTES)) break;
      for (const s of r.segments) {
        bytes += s.length;
        if (s.bytes) {
          buffers.push(s.bytes);
          flat.push(-buffers.length, s.at, s.length);
        } else flat.push(s.fd, s.at, s.length);
      }
      count++;
    }
    return { buffers, triples: Float64Array.from(flat), count };
  }

  /** Drops what `sent` bytes covered from the first `count` replies, telling each reply that left. */
  private advance(sent: number, count: number): void {
    let left = sent;
    for (let i = 0; i < count && left > 0; i++) {
      const r = this.queue[0];
      while (r.segments.length > 0 && left > 0) {
        const s = r.segments[0];
        const n = Math.min(s.length, left);
        left -= n;
        if (n === s.length) r.segments.shift();
        else {
          s.at += n;
          s.length -= n;
        }
      }
      if (r.segments.length > 0) break;
      this.queue.shift();
      r.sent?.();
    }
    // Replies with nothing to send (all parts empty) leave at once.
    while (this.queue.length > 0 && this.queue[0].segments.length === 0) this.queue.shift()?.sent?.();
  }

  private fail(e: unknown): void {
    const code = (e as NodeJS.ErrnoException)?.code;
    this.failed = new PlatterError('EIO', `connection lost while sending${code ? ` (${code})` : ''}`);
    for (const r of this.queue.splice(0)) r.sent?.(this.failed);
  }
}
