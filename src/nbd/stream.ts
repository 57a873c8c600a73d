/**
 * Exact-length reads from a socket: `read(n)` resolves with exactly n bytes,
 * `readInto(buf)` fills a caller's buffer without an extra copy. Incoming data
 * is buffered up to a high-water mark, then the socket is paused (backpressure).
 * End of stream or a socket error rejects the pending read and every later one.
 */
import type { Socket } from 'node:net';

const HIGH_WATER = 8 * 1024 * 1024;

export class StreamClosed extends Error {
  constructor(readonly why: string) {
    super(why);
    this.name = 'StreamClosed';
  }
}

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { need: number; resolve: () => void; reject: (e: Error) => void } | null = null;
  private ended: Error | null = null;

  constructor(private readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      if (this.buffered >= HIGH_WATER) socket.pause();
      this.wake();
    });
    socket.on('end', () => this.fail(new StreamClosed('connection closed by peer')));
    socket.on('close', () => this.fail(new StreamClosed('connection closed')));
    socket.on('error', (e) => this.fail(new StreamClosed(`connection error: ${e.message}`)));
  }

  get closed(): boolean {
    return this.ended !== null;
  }

  private fail(e: Error): void {
    if (!this.ended) this.ended = e;
    const w = this.waiter;
    if (w && this.buffered < w.need) {
      this.waiter = null;
      w.reject(this.ended);
    }
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.buffered >= w.need) {
      this.waiter = null;
      w.resolve();
    }
  }

  private async wait(need: number): Promise<void> {
    if (this.buffered >= need) return;
    if (this.ended) throw this.ended;
    this.socket.resume();
    await new Promise<void>((resolve, reject) => {
      this.waiter = { need, resolve, reject };
    });
  }

  /** Copies the next `target.length` buffered bytes into target (they must be buffered). */
  private take(target: Uint8Array): void {
    let done = 0;
    while (done < target.length) {
      const c = this.chunks[0];
      const n = Math.min(c.length, target.length - done);
      target.set(n === c.length ? c : c.subarray(0, n), done);
      done += n;
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
    }
    this.buffered -= target.length;
    if (this.buffered < HIGH_WATER) this.socket.resume();
  }

  /**
   * The next n bytes if all of them are buffered already, else null and
   * nothing is taken (a request loop then awaits read(): no promise per
   * request while requests arrive faster than they are served).
   */
  readNow(n: number): Buffer | null {
    return this.buffered >= n ? this.takeBuffered(n) : null;
  }

  async read(n: number): Promise<Buffer> {
    await this.wait(n);
    return this.takeBuffered(n);
  }

  private takeBuffered(n: number): Buffer {
    const c = this.chunks[0];
    if (c && c.length >= n) {
      // Fast path: a slice of one chunk, no copy.
      const out = c.subarray(0, n);
      if (c.length === n) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
      this.buffered -= n;
      if (this.buffered < HIGH_WATER) this.socket.resume();
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.take(out);
    return out;
  }

  /** Fills `target`, waiting for the data in pieces so a large payload is not buffered twice. */
  async readInto(target: Uint8Array): Promise<void> {
    let done = 0;
    while (done < target.length) {
      const want = Math.min(target.length - done, HIGH_WATER);
      await this.wait(1);
      const n = Math.min(want, this.buffered);
      this.take(target.subarray(done, done + n));
      done += n;
    }
  }

  /** Reads and drops n bytes. */
  async skip(n: number): Promise<void> {
    const scratch = Buffer.allocUnsafe(Math.min(n, 1 << 20));
    for (let done = 0; done < n; ) {
      const k = Math.min(scratch.length, n - done);
      await this.readInto(scratch.subarray(0, k));
      done += k;
    }
  }
}
