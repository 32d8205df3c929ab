// scrypt in a helper process of the gateway's own instead of libuv's thread pool (docs/performance.md,
// "Memory"). A device secret's scrypt (N=2^14, r=8) allocates 16 MiB in the thread that runs it.
// glibc serves the first such block with mmap and hands it back, but then raises its mmap threshold,
// so every later one comes from the running thread's malloc arena and stays there once freed: in
// libuv's pool up to four threads' worth (64 MiB) for the life of the process, unless
// MALLOC_MMAP_THRESHOLD_ was set when the process started (npm start, the .deb's wrapper and the
// image set it; `node bin/iothub-edge.js start` does not, and JavaScript cannot change it later).
// Worker threads only bound it (measured: +36 MB kept after 40 checks on one thread). A process
// gives all of it back: the helper is this same Node.js running `PROGRAM`, started on the first
// check once the gateway asked for it (`useScryptHelper()`; a CLI command's few checks stay in
// libuv's pool), ending `scryptHelper.idleMs` after the last (and with the gateway: it exits when its
// IPC channel closes, also after a kill -9). While it runs (a reconnect storm, a seeding) it takes
// ~75 MB of its own; it keeps its two blocks between checks, which is what makes it fast (see
// start()). Where it cannot be started, scrypt runs in libuv's pool as before. The same computation
// and parameters either way: only where it runs changes.
import { spawn, type ChildProcess } from 'node:child_process'
import { scrypt as scryptInPool, type ScryptOptions } from 'node:crypto'

/** At most this many scrypt computations at a time (one per core here): bounds a reconnect storm's memory too. */
export const CONCURRENCY = 2
/** How long the helper waits for more work before it ends (tests shorten it). */
export const scryptHelper = { idleMs: 10_000 }

// The helper's whole program: CommonJS, Node.js built-ins only (no file to find from the sources or dist/).
const PROGRAM = `
const { scrypt } = require('node:crypto')
process.on('disconnect', () => process.exit(0))
const answer = (m) => process.connected && process.send(m)
process.on('message', ({ id, password, salt, keylen, options }) => {
  try {
    scrypt(password, Buffer.from(salt, 'base64'), keylen, options, (err, key) => answer(err ? { id, error: err.message } : { id, key: key.toString('base64') }))
  } catch (err) {
    answer({ id, error: err.message })
  }
})`

interface Job {
  password: string
  salt: Buffer
  keylen: number
  options: ScryptOptions
  resolve: (key: Buffer) => void
  reject: (err: Error) => void
}

const queue: Job[] = []
const inFlight = new Map<number, Job>()
let nextId = 1
let helper: ChildProcess | undefined
let answered = false
let idleTimer: NodeJS.Timeout | undefined
/** The helper could not be started here: scrypt runs in libuv's pool, as node:crypto does. */
let noHelper = false
/** Only a long-running gateway asks for the helper; a CLI command's few checks run in libuv's pool. */
let useHelper = false
let poolRunning = 0

/** From now on, scrypt runs in the helper process (the gateway calls this when it starts). */
export function useScryptHelper(): void {
  useHelper = true
}

/** scrypt(password, salt), the key as `crypto.scrypt` gives it, computed in the gateway's scrypt helper. */
export function scryptOffProcess(password: string, salt: Buffer, keylen: number, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    queue.push({ password, salt, keylen, options, resolve, reject })
    dispatch()
  })
}

/** The helper's pid while it runs (tests: it ends when idle). */
export function scryptHelperPid(): number | undefined {
  return helper?.pid
}

function inPool(job: Job): void {
  poolRunning++
  try {
    scryptInPool(job.password, job.salt, job.keylen, job.options, (err, key) => {
      poolRunning--
      if (err) job.reject(err)
      else job.resolve(key)
      dispatch()
    })
  } catch (err) {
    // Parameters scrypt refuses (a stored hash's N not a power of two) throw at once.
    poolRunning--
    job.reject(err as Error)
  }
}

function dispatch(): void {
  while (queue.length > 0 && inFlight.size + poolRunning < CONCURRENCY) {
    const job = queue.shift()!
    const child = useHelper && !noHelper ? (helper ?? start()) : undefined
    if (!child) {
      inPool(job)
      continue
    }
    const id = nextId++
    inFlight.set(id, job)
    clearTimeout(idleTimer)
    // While it works the helper keeps the process alive (a check in flight is awaited by someone).
    child.ref()
    child.channel?.ref()
    try {
      // A send that fails is followed by the helper's 'exit' or 'error', which hands its jobs back.
      child.send({ id, password: job.password, salt: job.salt.toString('base64'), keylen: job.keylen, options: job.options }, () => {})
    } catch {
      // (the same)
    }
  }
}

function start(): ChildProcess | undefined {
  let child: ChildProcess
  try {
    child = spawn(process.execPath, ['-e', PROGRAM], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      // glibc's own defaults in the helper (undefined drops a variable): after the first check, its
      // 16 MiB blocks stay in the arena of the thread that ran it and are reused, not mapped, faulted
      // in and unmapped again each time (MALLOC_MMAP_THRESHOLD_=131072 made each check 2.6-2.9 times
      // slower: 55-61 ms against 20-21 ms). A libuv pool of two threads, the checks at a time, bounds
      // what the arenas keep to two blocks: the helper's peak is the same 75 MB either way, and all of
      // it goes back when the helper ends. NODE_OPTIONS is the gateway's business.
      env: { ...process.env, MALLOC_MMAP_THRESHOLD_: undefined, MALLOC_TRIM_THRESHOLD_: undefined, MALLOC_ARENA_MAX: undefined, UV_THREADPOOL_SIZE: String(CONCURRENCY), NODE_OPTIONS: undefined },
    })
  } catch {
    noHelper = true
    return undefined
  }
  helper = child
  answered = false
  child.on('message', (m: { id: number; key?: string; error?: string }) => {
    answered = true
    const job = inFlight.get(m.id)
    inFlight.delete(m.id)
    if (job) {
      if (m.key !== undefined) job.resolve(Buffer.from(m.key, 'base64'))
      else job.reject(new Error(m.error ?? 'scrypt failed'))
    }
    if (queue.length > 0) return dispatch()
    if (inFlight.size === 0) idle(child)
  })
  // The helper could not start (spawn failed) or ended: what it had in hand goes back in the queue,
  // for a new helper, or, if this one never answered, for libuv's pool from now on (the same result).
  const ended = (): void => {
    if (helper !== child) return
    helper = undefined
    clearTimeout(idleTimer)
    if (!answered) noHelper = true
    queue.unshift(...inFlight.values())
    inFlight.clear()
    dispatch()
  }
  child.on('error', ended)
  child.on('exit', ended)
  return child
}

function idle(child: ChildProcess): void {
  child.unref()
  child.channel?.unref()
  clearTimeout(idleTimer)
  idleTimer = setTimeout(() => {
    if (helper !== child || inFlight.size > 0) return
    helper = undefined
    child.disconnect()
  }, scryptHelper.idleMs)
  idleTimer.unref()
}
