import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BackgroundSync } from '../../src/core/background-sync.js';

/** A sync whose calls are counted and settled by the test. */
function controlled() {
  const pending: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  let calls = 0;
  const sync = () =>
    new Promise<void>((resolve, reject) => {
      calls++;
      pending.push({ resolve, reject });
    });
  return { sync, pending, calls: () => calls };
}

describe('BackgroundSync', () => {
  it('starts a sync every `every` bytes, never two at once', async () => {
    const c = controlled();
    const bg = new BackgroundSync(c.sync, 100);
    bg.wrote(60);
    assert.equal(c.calls(), 0);
    bg.wrote(60);
    assert.equal(c.calls(), 1);
    bg.wrote(500); // one is in flight: no second
    assert.equal(c.calls(), 1);
    assert.equal(bg.busy, true);
    c.pending.shift()!.resolve();
    await bg.idle();
    assert.equal(bg.busy, false);
    bg.wrote(1); // the 500 bytes counted while it ran are due now
    assert.equal(c.calls(), 2);
    c.pending.shift()!.resolve();
    await bg.idle();
    bg.reset();
    bg.wrote(99);
    assert.equal(c.calls(), 2, 'reset forgot the bytes before it');
  });

  it('keeps a failure, starts no more syncs until it is taken, and throws it once', async () => {
    const c = controlled();
    const bg = new BackgroundSync(c.sync, 10);
    bg.wrote(10);
    c.pending.shift()!.reject(new Error('EIO'));
    await bg.idle();
    bg.wrote(1000);
    assert.equal(c.calls(), 1, 'no sync after a failure');
    assert.throws(() => bg.throwFailure(), /EIO/);
    bg.throwFailure(); // taken: nothing more to throw
    bg.wrote(10);
    assert.equal(c.calls(), 2);
  });
});
