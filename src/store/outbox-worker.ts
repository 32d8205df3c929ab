// The outbox's writer thread: it owns a second connection to gateway.db and runs each group commit
// the main thread sends (outbox-commit.ts), fsync included, while the main thread's event loop goes on.
import Database from 'better-sqlite3'
import { parentPort, workerData, type MessagePort } from 'node:worker_threads'
import { OutboxTransaction, connectionSettings, type CommitBatch, type CommitError, type CommitResult, type CommitterSettings } from './outbox-commit.js'

export interface WorkerSetup {
  file: string
  pragmas: string[]
  port: MessagePort
}
export type WorkerReply = { ok: CommitResult } | { error: CommitError } | { closed: true } | { settings: CommitterSettings }

const setup = (workerData as { outbox: WorkerSetup }).outbox
const db = new Database(setup.file)
for (const p of setup.pragmas) db.pragma(p)
const tx = new OutboxTransaction(db)
// What this connection actually runs with (synchronous=FULL above all), read back, not assumed.
setup.port.postMessage({ settings: connectionSettings(db, true) } satisfies WorkerReply)

parentPort!.on('message', (m: CommitBatch | { close: true }) => {
  if ('close' in m) {
    // Closed before the main thread closes its own connection: the last one to close checkpoints
    // the WAL into the file, and that is the main thread's, at a clean stop.
    db.close()
    setup.port.postMessage({ closed: true } satisfies WorkerReply)
    setup.port.close()
    parentPort!.close()
    return
  }
  let reply: WorkerReply
  try {
    reply = { ok: tx.run(m) }
  } catch (err) {
    const e = err as Error & { code?: string }
    reply = { error: { message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) } }
  }
  setup.port.postMessage(reply)
})
