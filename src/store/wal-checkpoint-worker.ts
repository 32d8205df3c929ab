// The WAL's checkpointer thread (wal-checkpointer.ts): a connection of its own to gateway.db that
// copies committed WAL frames into the database file (and fsyncs it) while the main thread's event
// loop goes on; it ends itself after a while with nothing to copy (the thread's 'exit' tells).
import Database from 'better-sqlite3'
import { parentPort, workerData } from 'node:worker_threads'

export interface CheckpointSetup {
  file: string
  everyMs: number
  idleMs: number
  /** [0] set to 1 once this thread's connection is closed (the main thread may wait for it). */
  closed: Int32Array
}
export type CheckpointReply = { message: string; code?: string }

const setup = (workerData as { checkpoint: CheckpointSetup }).checkpoint
const db = new Database(setup.file, { fileMustExist: true })
// The checkpoint fsyncs the database file after copying (synchronous=FULL, as the main connection).
db.pragma('synchronous = FULL')
let lastWork = Date.now()
let seen = ''

const checkpoint = (): { busy: number; log: number; checkpointed: number } =>
  (db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[])[0]

function once(): void {
  try {
    // PASSIVE: copies what no reader still needs, never waits for a reader or the writer. `log` and
    // `checkpointed` count the frames of the current WAL (it starts again from its beginning once all
    // of it is copied and the next transaction writes).
    let r = checkpoint()
    // Caught up, the next transaction of the main connection starts the WAL again from its
    // beginning: if new frames came in during the copy, copy once more. Under writes that never
    // pause that long, the main connection's automatic checkpoint (the backstop) finds almost
    // everything copied and only has the last frames to do before the WAL starts again.
    if (r.checkpointed < r.log) r = checkpoint()
    const now = `${r.log}/${r.checkpointed}`
    if (now !== seen) {
      seen = now
      lastWork = Date.now()
    }
  } catch (err) {
    const e = err as Error & { code?: string }
    // Busy (the main thread checkpoints itself, e.g. on a full disk): next time.
    if (e.code !== 'SQLITE_BUSY') parentPort!.postMessage({ message: e.message, ...(typeof e.code === 'string' ? { code: e.code } : {}) } satisfies CheckpointReply)
  }
  if (Date.now() - lastWork >= setup.idleMs) stop()
}

const timer = setInterval(once, setup.everyMs)

function stop(): void {
  clearInterval(timer)
  if (db.open) db.close()
  Atomics.store(setup.closed, 0, 1)
  Atomics.notify(setup.closed, 0)
  parentPort!.close()
}

parentPort!.on('message', (m: { close: true }) => {
  if (m.close) stop()
})
