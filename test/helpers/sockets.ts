/** A connected pair of unix stream sockets for tests: the accepting side and the connecting side. */
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';

export async function socketPair(dir: string, name: string): Promise<{ server: Socket; client: Socket }> {
  const path = join(dir, name);
  const accepted = new Promise<Socket>((resolve) => {
    const srv = createServer((s) => {
      srv.close();
      resolve(s);
    });
    srv.listen(path);
  });
  const client = connect(path);
  const server = await accepted;
  server.on('error', () => undefined);
  client.on('error', () => undefined);
  return { server, client };
}
