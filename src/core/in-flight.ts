/**
 * Counts the calls in flight on a resource, so that closing it can wait for
 * them: a caller that gives up at the first of several failed calls
 * (Promise.all) closes while the others still run, and a descriptor closed
 * under a queued pread or pwrite fails it with EBADF or, reused by the next
 * open, points it at another file.
 */
export class InFlight {
  private count = 0;
  private idle: Array<() => void> = [];

  async run<T>(fn: () => Promise<T>): Promise<T> {
    this.count++;
    try {
      return await fn();
    } finally {
      if (--this.count === 0) for (const wake of this.idle.splice(0)) wake();
    }
  }

  /** Resolves once no call is in flight. */
  drained(): Promise<void> {
    if (this.count === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }
}
