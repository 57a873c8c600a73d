/** zeroDisk(size): the bottom of every chain; all `hole`, reads zeros (principle 5). */
import { type Disk, toDisk } from './disk.js';

export function zeroDisk(size: number): Disk {
  return toDisk(
    {
      size,
      async read(buf) {
        buf.fill(0);
      },
      async extents(offset, length) {
        return [{ offset, length, status: 'hole', depth: 0 }];
      },
      async info() {
        return { format: 'zero' };
      },
    },
    { name: 'zero', readOnly: true, layers: [] },
  );
}
