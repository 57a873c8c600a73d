/**
 * Child process for the log tests: opens a VHDX for writing, writes a pattern
 * (argv: image, offset, length, seed) and flushes; the test hook kills the
 * process with SIGKILL as soon as the log entry is durable and named by the
 * headers, before it is applied: a real kill mid-transaction.
 */
import { vhdxTestHooks } from '../../../src/formats/vhdx/image.js';
import { openWrite, pattern } from './util.js';

const [path, offset, length, seed] = process.argv.slice(2);
vhdxTestHooks.afterLogWritten = () => {
  process.kill(process.pid, 'SIGKILL');
};
const d = await openWrite(path);
await d.write(pattern(Number(length), Number(seed)), Number(offset));
await d.flush();
console.log('not killed');
