// Device secrets and UI/app passwords are checked with scrypt in the gateway's scrypt helper process
// (src/core/scrypt-process.ts, docs/performance.md "Memory"): the same keys as node:crypto's scrypt,
// so hashes stored before still verify; at most two at a time however many checks wait; the helper
// ends when idle, and with the gateway.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { scryptSync } from 'node:crypto'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { pathToFileURL } from 'node:url'
import os from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { openDatabase, type Db } from '../../src/store/db.js'
import { DeviceRegistry, hashSecret } from '../../src/store/devices.js'
import { hashPassword, verifyPassword } from '../../src/core/password-hash.js'
import { repoRoot } from '../helpers/gateway-process.js'
import { CONCURRENCY, scryptHelper, scryptHelperPid, scryptOffProcess, useScryptHelper } from '../../src/core/scrypt-process.js'

// As the gateway does when it starts (a CLI command's checks stay in libuv's pool).
useScryptHelper()

let dir: string
let db: Db
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'scrypt-threads-'))
  db = openDatabase(dir)
})
afterEach(() => {
  db.close()
  rmSync(dir, { recursive: true, force: true })
})

const ref = { productId: 'meters', deviceId: 'm1' }

/** Whether the process runs (an orphan that ended may stay a zombie until its new parent reaps it). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

async function until(what: () => boolean, ms = 20_000): Promise<void> {
  for (const end = Date.now() + ms; !what(); ) {
    if (Date.now() > end) throw new Error('condition not reached')
    await new Promise((r) => setTimeout(r, 20))
  }
}

describe('scrypt in the gateway’s helper process', () => {
  it('gives the keys node:crypto gives: a device secret hashed before this change still authenticates, a new hash is the same scrypt', async () => {
    const salt = Buffer.alloc(16, 7)
    // A hash as the registry stored it before (scrypt N=2^14, r=8, p=1 from node:crypto).
    const before = `scrypt$16384$8$1$${salt.toString('base64')}$${scryptSync('s3cret-value', salt, 32, { N: 16384, r: 8, p: 1, maxmem: 64 << 20 }).toString('base64')}`
    const registry = new DeviceRegistry(db, dir, false)
    await registry.seed([{ productId: ref.productId, deviceId: ref.deviceId, secret: 'other-secret', tags: [], enabled: true }])
    db.prepare('UPDATE devices SET secret_hash = ? WHERE product_id = ? AND device_id = ?').run(before, ref.productId, ref.deviceId)
    expect(await registry.authenticate(ref, 'wrong-secret')).toBe('bad_secret')
    expect(await registry.authenticate(ref, 's3cret-value')).toBe('ok')

    const made = await hashSecret('another-secret')
    const [scheme, n, r, p, s, key] = made.split('$')
    expect([scheme, n, r, p]).toEqual(['scrypt', '16384', '8', '1'])
    expect(scryptSync('another-secret', Buffer.from(s!, 'base64'), 32, { N: 16384, r: 8, p: 1, maxmem: 64 << 20 }).toString('base64')).toBe(key)

    // The UI's and app accounts' hashes too (their own parameters, checked the same way).
    const ui = await hashPassword('a-long-enough-password', { N: 1024, r: 8, p: 1 })
    expect(await verifyPassword('a-long-enough-password', ui)).toEqual({ ok: true, stale: true })
    expect((await verifyPassword('not-the-password', ui)).ok).toBe(false)
  })

  it('computes in a process of its own that ends when idle, refuses what scrypt refuses, and starts again for the next check', async () => {
    const was = scryptHelper.idleMs
    scryptHelper.idleMs = 200
    try {
      const salt = Buffer.alloc(16, 1)
      const params = { N: 1 << 14, r: 8, p: 1, maxmem: 64 << 20 }
      // More checks than run at a time: they wait their turn and all come back right.
      const keys = await Promise.all(Array.from({ length: CONCURRENCY * 3 }, (_, i) => scryptOffProcess(`secret-${i}`, salt, 32, params)))
      keys.forEach((key, i) => expect(key.equals(scryptSync(`secret-${i}`, salt, 32, params))).toBe(true))
      const pid = scryptHelperPid()
      expect(pid).toBeDefined()
      expect(pid).not.toBe(process.pid)
      expect(alive(pid!)).toBe(true)
      // glibc's defaults and a pool of two threads in the helper, whatever the gateway was started
      // with: a fixed mmap threshold there made each check ~2.7 times slower (docs/performance.md).
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')
      expect(environ).toContain(`UV_THREADPOOL_SIZE=${CONCURRENCY}`)
      expect(environ.filter((e) => e.startsWith('MALLOC_'))).toEqual([])
      // N not a power of two: an error, as from node:crypto, and the next check still works.
      await expect(scryptOffProcess('x', salt, 32, { N: 1000, r: 8, p: 1 })).rejects.toThrow(/N|invalid/i)
      expect((await scryptOffProcess('x', salt, 16, { N: 1024, r: 8, p: 1 })).length).toBe(16)
      await until(() => !alive(pid!))
      // Started again for the next check.
      expect((await scryptOffProcess('x', salt, 16, { N: 1024, r: 8, p: 1 })).equals(scryptSync('x', salt, 16, { N: 1024, r: 8, p: 1 }))).toBe(true)
      expect(scryptHelperPid()).not.toBe(pid)
    } finally {
      scryptHelper.idleMs = was
    }
  })

  it('ends when the process it serves is killed with kill -9', async () => {
    const built = pathToFileURL(path.join(repoRoot, 'dist', 'core', 'scrypt-process.js')).href
    const program = `import { scryptOffProcess, scryptHelperPid, useScryptHelper } from ${JSON.stringify(built)}
useScryptHelper()
await scryptOffProcess('x', Buffer.alloc(16), 16, { N: 1024, r: 8, p: 1 })
console.log(scryptHelperPid())
setInterval(() => {}, 1000)`
    const served = spawn(process.execPath, ['--input-type=module', '-e', program], { stdio: ['ignore', 'pipe', 'inherit'] })
    const [line] = (await once(served.stdout.setEncoding('utf8'), 'data')) as [string]
    const helperPid = Number(line.trim())
    expect(alive(helperPid)).toBe(true)
    served.kill('SIGKILL')
    await until(() => !alive(helperPid))
  })
})
