// Port helpers for tests that talk to real listeners: ask the OS for a free port, and wait
// until something accepts connections on one.
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

// The OS may hand the same ephemeral port out twice in a row once it has been closed; a test
// that asks for several ports before binding any of them must still get distinct ones.
const handedOut = new Set<number>()

/** A TCP port that was free on 127.0.0.1 a moment ago (listen on port 0, read it, close). */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await probe()
    if (!handedOut.has(port)) {
      handedOut.add(port)
      return port
    }
  }
  throw new Error('freePort: the OS kept returning ports already handed out to this test process')
}

function probe(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      if (address === null || typeof address === 'string') {
        server.close()
        reject(new Error(`freePort: unexpected listen address ${String(address)}`))
        return
      }
      server.close((err) => (err ? reject(err) : resolve(address.port)))
    })
  })
}

/** Resolves once a TCP connection to host:port succeeds; `abort` returns a reason to give up early. */
export async function waitForTcp(
  port: number,
  opts: { host?: string; timeoutMs?: number; abort?: () => string | undefined } = {},
): Promise<void> {
  const host = opts.host ?? '127.0.0.1'
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000)
  let lastError = 'no attempt made'
  while (Date.now() < deadline) {
    const reason = opts.abort?.()
    if (reason !== undefined) throw new Error(`waitForTcp ${host}:${port}: ${reason}`)
    try {
      await connectOnce(port, host)
      return
    } catch (err) {
      lastError = (err as Error).message
    }
    await sleep(50)
  }
  throw new Error(`waitForTcp ${host}:${port}: nothing accepted a connection in time (last error: ${lastError})`)
}

function connectOnce(port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host })
    socket.setTimeout(1000)
    socket.once('connect', () => {
      socket.destroy()
      resolve()
    })
    socket.once('timeout', () => {
      socket.destroy()
      reject(new Error('connect timed out'))
    })
    socket.once('error', (err) => {
      socket.destroy()
      reject(err)
    })
  })
}
