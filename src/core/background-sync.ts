/**
 * BackgroundSync: after every `every` bytes written, start `sync()` (an
 * fdatasync) in the background, one at a time, so the device writes while the
 * work goes on and the final flush waits only for the tail. A failed sync is
 * kept (no further sync starts) until the owner takes it with throwFailure().
 * Used by acquire (raw and split destinations) and storage/sync-file.ts.
 */
export class BackgroundSync {
  private inFlight: Promise<void> | undefined;
  private failed = false;
  private failure: unknown;
  private unsynced = 0;

  constructor(
    private readonly sync: () => Promise<void>,
    private readonly every: number,
  ) {}

  /** Counts `bytes` written; starts a sync when enough have been since the last one started. */
  wrote(bytes: number): void {
    this.unsynced += bytes;
    if (this.inFlight || this.failed || this.unsynced < this.every) return;
    this.unsynced = 0;
    this.inFlight = this.sync().then(
      () => {
        this.inFlight = undefined;
      },
      (e) => {
        this.failed = true;
        this.failure = e;
        this.inFlight = undefined;
      },
    );
  }

  /** A sync is in flight. */
  get busy(): boolean {
    return this.inFlight !== undefined;
  }

  /** Resolves once no sync is in flight (never rejects). */
  async idle(): Promise<void> {
    while (this.inFlight) await this.inFlight;
  }

  /** Throws the error of a failed background sync, once. */
  throwFailure(): void {
    if (!this.failed) return;
    this.failed = false;
    const e = this.failure;
    this.failure = undefined;
    throw e;
  }

  /** Forgets the bytes written since the last sync: a full flush is about to cover them. */
  reset(): void {
    this.unsynced = 0;
  }
}
