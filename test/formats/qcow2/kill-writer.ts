/** Child for the kill -9 test: writes forever into a qcow2 image, SIGKILLs itself mid-way. */
import { openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';

const path = process.argv[2];
const d = await openImage(nodeHost, path, { readOnly: false });
process.stdout.write('writing\n');
let i = 0;
const buf = new Uint8Array(3 * 4096 + 100).fill(0xee);
setTimeout(() => process.kill(process.pid, 'SIGKILL'), 400);
for (;;) {
  const off = ((i * 7919 * 4096) % (d.size - buf.length)) + (i % 3) * 1000;
  await d.write(buf, off);
  i++;
}
