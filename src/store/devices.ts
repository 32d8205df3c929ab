// The device registry: identities, secrets (scrypt-hashed; AES-GCM-encrypted only when the
// northbound link needs them in clear, in `devices` mode), tags and the enabled flag.
import { EventEmitter } from 'node:events'
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import path from 'node:path'
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'
import type { DeviceRef } from '../core/types.js'
import type { AuthResult } from '../core/adapter-context.js'
import { deviceKey } from '../core/types.js'
import { scryptOffProcess } from '../core/scrypt-process.js'
import type { DeviceSeedConfig } from '../config.js'

export interface Device extends DeviceRef {
  tags: string[]
  tagsVersion: number
  enabled: boolean
  hasSecret: boolean
  createdAt: number
  updatedAt: number
}

interface Row {
  product_id: string
  device_id: string
  secret_hash: string | null
  secret_enc: Buffer | null
  tags: string
  tags_version: number
  enabled: number
  seed_digest: string | null
  changed_by_api: number
  created_at: number
  updated_at: number
}

// PROTOCOL.md / issue: salted scrypt, N=2^14, r=8, p=1.
const SCRYPT = { N: 1 << 14, r: 8, p: 1, keylen: 32, maxmem: 64 * 1024 * 1024 }

// Each scrypt holds 16 MiB (128 * N * r) while it runs: in the gateway's scrypt helper, at most two
// at a time (src/core/scrypt-process.ts), so a reconnect storm costs bounded memory instead of one
// 16 MiB buffer per waiting device, and the allocator is not left holding libuv's four threads' worth (64 MiB).
function scryptAsync(secret: string, salt: Buffer): Promise<Buffer> {
  return scryptOffProcess(secret, salt, SCRYPT.keylen, SCRYPT)
}

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(16)
  const key = await scryptAsync(secret, salt)
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${key.toString('base64')}`
}

async function verifyHash(secret: string, stored: string): Promise<boolean> {
  const [scheme, , , , salt, key] = stored.split('$')
  if (scheme !== 'scrypt' || !salt || !key) return false
  const got = await scryptAsync(secret, Buffer.from(salt, 'base64'))
  const want = Buffer.from(key, 'base64')
  return got.length === want.length && timingSafeEqual(got, want)
}


/** Events: 'changed' (Device), 'removed' (DeviceRef), 'disabled' (DeviceRef). */
export class DeviceRegistry extends EventEmitter {
  private readonly bootKey = randomBytes(32)
  // After one successful scrypt check: HMAC of the secret under a per-boot key, so reconnect
  // storms and per-request CoAP/HTTP auth cost microseconds, not 45 ms of CPU each.
  private readonly verified = new Map<string, Buffer>()
  // Recently failed secrets per device, so a client hammering a wrong password costs one scrypt.
  private readonly failed = new Map<string, Set<string>>()
  // scrypt checks under way, by device, secret (its HMAC) and stored hash.
  private readonly checking = new Map<string, Promise<boolean>>()
  private readonly localKey: Buffer
  private readonly st: Record<
    'get' | 'all' | 'insert' | 'setEnabled' | 'setSecret' | 'remove' | 'setTags' | 'editTags' | 'applySeed' | 'tomb' | 'tombstone' | 'untomb',
    Statement
  >

  constructor(
    private readonly db: Db,
    dataDir: string,
    private readonly keepSecretsForNorthbound: boolean,
  ) {
    super()
    this.localKey = loadOrCreateKey(path.join(dataDir, 'secret.key'))
    this.st = {
      get: db.prepare('SELECT * FROM devices WHERE product_id = ? AND device_id = ?'),
      // Not the secrets: a list of 10,000 devices is read at start and on every hub connection.
      all: db.prepare(
        'SELECT product_id, device_id, tags, tags_version, enabled, secret_hash IS NOT NULL AS has_secret, created_at, updated_at FROM devices ORDER BY product_id, device_id',
      ),
      insert: db.prepare(
        `INSERT INTO devices (product_id, device_id, secret_hash, secret_enc, tags, enabled, seed_digest, changed_by_api, created_at, updated_at)
         VALUES (@p, @d, @hash, @enc, @tags, @enabled, @seed, @api, @now, @now)`,
      ),
      setEnabled: db.prepare('UPDATE devices SET enabled = ?, changed_by_api = 1, updated_at = ? WHERE product_id = ? AND device_id = ?'),
      setSecret: db.prepare(
        'UPDATE devices SET secret_hash = ?, secret_enc = ?, changed_by_api = 1, updated_at = ? WHERE product_id = ? AND device_id = ?',
      ),
      remove: db.prepare('DELETE FROM devices WHERE product_id = ? AND device_id = ?'),
      tomb: db.prepare('INSERT OR REPLACE INTO removed_seeds (product_id, device_id, seed_digest) VALUES (?, ?, ?)'),
      tombstone: db.prepare('SELECT seed_digest FROM removed_seeds WHERE product_id = ? AND device_id = ?'),
      untomb: db.prepare('DELETE FROM removed_seeds WHERE product_id = ? AND device_id = ?'),
      setTags: db.prepare('UPDATE devices SET tags = ?, tags_version = ?, updated_at = ? WHERE product_id = ? AND device_id = ?'),
      editTags: db.prepare(
        'UPDATE devices SET tags = ?, tags_version = tags_version + 1, changed_by_api = 1, updated_at = ? WHERE product_id = ? AND device_id = ?',
      ),
      applySeed: db.prepare(
        `UPDATE devices SET secret_hash = @hash, secret_enc = @enc, tags = @tags, enabled = @enabled, seed_digest = @seed, updated_at = @now
         WHERE product_id = @p AND device_id = @d`,
      ),
    }
  }

  get(ref: DeviceRef): Device | undefined {
    const r = this.st.get.get(ref.productId, ref.deviceId) as Row | undefined
    return r && toDevice(r)
  }

  /**
   * Every device, read once per synchronous run of code: at start and on each hub connection several
   * parts (the children's hub subscriptions, their tag filters, their state requests) each want the
   * whole list in the same turn; read apart, 10,000 devices cost ~7 MB of short-lived objects each.
   * A write through this registry reads it again. Callers do not change what they get.
   */
  list(): readonly Device[] {
    if (this.listed) return this.listed
    const list = (this.st.all.all() as ListRow[]).map(toDevice)
    this.listed = list
    queueMicrotask(() => {
      if (this.listed === list) this.listed = undefined
    })
    return list
  }

  private listed: readonly Device[] | undefined

  // A write: the next list() reads the table again.
  private touched(): void {
    this.listed = undefined
  }

  /** Whether any device is registered (one row read, whatever the table's size). */
  isEmpty(): boolean {
    return this.db.prepare('SELECT 1 FROM devices LIMIT 1').get() === undefined
  }

  /** Seed from config: create what is absent; re-apply a changed seed only where the API never changed the device. */
  async seed(seeds: readonly DeviceSeedConfig[]): Promise<{ created: number; updated: number }> {
    let created = 0
    let updated = 0
    // What needs writing is decided first; the secrets are then hashed together (the scrypt queue
    // runs two at a time: a first start with 100 devices in the config took ~8 s one after another),
    // and the writes applied in the config's order.
    const todo: { s: DeviceSeedConfig; digest: string; row: Row | undefined; tomb: boolean }[] = []
    for (const s of seeds) {
      const digest = createHmac('sha256', this.localKey)
        .update(JSON.stringify([s.productId, s.deviceId, s.secret ?? null, s.tags, s.enabled]))
        .digest('base64')
      const row = this.st.get.get(s.productId, s.deviceId) as Row | undefined
      if (row && (row.seed_digest === digest || row.changed_by_api)) continue
      // Removed through the API or CLI since: stays removed until the seed itself changes.
      const tomb = !row && (this.st.tombstone.get(s.productId, s.deviceId) as { seed_digest: string } | undefined)
      if (tomb && tomb.seed_digest === digest) continue
      todo.push({ s, digest, row, tomb: !!tomb })
    }
    const hashes = await Promise.all(todo.map((t) => (t.s.secret ? hashSecret(t.s.secret) : Promise.resolve(null))))
    todo.forEach(({ s, digest, row, tomb }, i) => {
      if (tomb) this.st.untomb.run(s.productId, s.deviceId)
      const values = {
        p: s.productId,
        d: s.deviceId,
        hash: hashes[i],
        enc: s.secret && this.keepSecretsForNorthbound ? this.encrypt(s.secret) : null,
        tags: JSON.stringify(s.tags),
        enabled: s.enabled ? 1 : 0,
        seed: digest,
        api: 0,
        now: Date.now(),
      }
      this.touched()
      if (row) {
        this.st.applySeed.run(values)
        this.forget(s)
        updated++
      } else {
        this.st.insert.run(values)
        created++
      }
      this.emit('changed', this.get(s))
    })
    return { created, updated }
  }

  /** Create a device; returns the secret (generated when not given) exactly once. */
  async add(ref: DeviceRef & { secret?: string; tags?: string[]; enabled?: boolean }): Promise<{ device: Device; secret: string }> {
    if (this.get(ref)) throw Object.assign(new Error(`device ${deviceKey(ref)} already exists`), { code: 'EXISTS' })
    const secret = ref.secret ?? randomBytes(18).toString('base64url')
    this.st.untomb.run(ref.productId, ref.deviceId)
    this.touched()
    this.st.insert.run({
      p: ref.productId,
      d: ref.deviceId,
      hash: await hashSecret(secret),
      enc: this.keepSecretsForNorthbound ? this.encrypt(secret) : null,
      tags: JSON.stringify(ref.tags ?? []),
      enabled: ref.enabled === false ? 0 : 1,
      seed: null,
      api: 1,
      now: Date.now(),
    })
    const device = this.get(ref)!
    this.emit('changed', device)
    return { device, secret }
  }

  setEnabled(ref: DeviceRef, enabled: boolean): Device | undefined {
    this.touched()
    if (this.st.setEnabled.run(enabled ? 1 : 0, Date.now(), ref.productId, ref.deviceId).changes === 0) return undefined
    const device = this.get(ref)!
    if (!enabled) {
      this.forget(ref)
      this.emit('disabled', ref)
    }
    this.emit('changed', device)
    return device
  }

  async setSecret(ref: DeviceRef, secret: string): Promise<boolean> {
    const hash = await hashSecret(secret)
    const enc = this.keepSecretsForNorthbound ? this.encrypt(secret) : null
    this.touched()
    if (this.st.setSecret.run(hash, enc, Date.now(), ref.productId, ref.deviceId).changes === 0) return false
    this.forget(ref)
    this.emit('changed', this.get(ref))
    return true
  }

  remove(ref: DeviceRef): boolean {
    const row = this.st.get.get(ref.productId, ref.deviceId) as Row | undefined
    if (!row) return false
    this.db.transaction(() => {
      this.touched()
      this.st.remove.run(ref.productId, ref.deviceId)
      if (row.seed_digest) this.st.tomb.run(ref.productId, ref.deviceId, row.seed_digest)
    })()
    this.forget(ref)
    this.emit('removed', ref)
    return true
  }

  setTags(ref: DeviceRef, tags: string[], version: number): void {
    this.touched()
    this.st.setTags.run(JSON.stringify(tags), version, Date.now(), ref.productId, ref.deviceId)
  }

  /**
   * A technician's tag edit (API, CLI): the new set with the next tags_version, so that a device
   * asking with its old version gets it; the hub's next `$set_tags` with a greater version still
   * wins (the hub owns tags). Counts as an API change: a config seed no longer overwrites it.
   */
  editTags(ref: DeviceRef, tags: string[]): Device | undefined {
    const unique = [...new Set(tags)]
    this.touched()
    if (this.st.editTags.run(JSON.stringify(unique), Date.now(), ref.productId, ref.deviceId).changes === 0) return undefined
    const device = this.get(ref)!
    this.emit('changed', device)
    return device
  }

  async authenticate(ref: DeviceRef, secret: string): Promise<AuthResult> {
    const row = this.st.get.get(ref.productId, ref.deviceId) as Row | undefined
    if (!row) return 'unknown'
    if (!row.enabled) return 'disabled'
    if (!row.secret_hash) return 'bad_secret'
    const key = deviceKey(ref)
    const mac = createHmac('sha256', this.bootKey).update(secret).digest()
    const known = this.verified.get(key)
    if (known) return timingSafeEqual(known, mac) ? 'ok' : this.checkFailed(key, mac)
    const macB64 = mac.toString('base64')
    if (this.failed.get(key)?.has(macB64)) return 'bad_secret'
    // Connections of one device with one secret that arrive while its check runs (several clients of
    // one device, a client that gave up waiting for its CONNACK and connected again, a reconnect
    // storm after a restart) wait for that check instead of each queueing a scrypt of its own.
    const checkKey = `${key}\n${macB64}\n${row.secret_hash}`
    let check = this.checking.get(checkKey)
    if (!check) {
      check = verifyHash(secret, row.secret_hash).finally(() => this.checking.delete(checkKey))
      this.checking.set(checkKey, check)
    }
    const ok = await check
    // The device may have been changed while scrypt ran; only cache against the current hash.
    const now = this.st.get.get(ref.productId, ref.deviceId) as Row | undefined
    if (!now || now.secret_hash !== row.secret_hash) return now && !now.enabled ? 'disabled' : 'bad_secret'
    if (!now.enabled) return 'disabled'
    if (ok) {
      this.verified.set(key, mac)
      return 'ok'
    }
    return this.checkFailed(key, mac)
  }

  private checkFailed(key: string, mac: Buffer): AuthResult {
    let set = this.failed.get(key)
    if (!set) this.failed.set(key, (set = new Set()))
    if (set.size >= 16) set.clear()
    set.add(mac.toString('base64'))
    return 'bad_secret'
  }

  private forget(ref: DeviceRef): void {
    this.verified.delete(deviceKey(ref))
    this.failed.delete(deviceKey(ref))
  }

  /** The clear secret for the northbound `devices` mode; undefined when not kept. */
  secretOf(ref: DeviceRef): string | undefined {
    const r = this.st.get.get(ref.productId, ref.deviceId) as Row | undefined
    return r?.secret_enc ? this.decrypt(r.secret_enc) : undefined
  }

  private encrypt(secret: string): Buffer {
    const iv = randomBytes(12)
    const c = createCipheriv('aes-256-gcm', this.localKey, iv)
    const body = Buffer.concat([c.update(secret, 'utf8'), c.final()])
    return Buffer.concat([iv, c.getAuthTag(), body])
  }

  private decrypt(blob: Buffer): string {
    const d = createDecipheriv('aes-256-gcm', this.localKey, blob.subarray(0, 12))
    d.setAuthTag(blob.subarray(12, 28))
    return Buffer.concat([d.update(blob.subarray(28)), d.final()]).toString('utf8')
  }
}

// What list() reads: no secrets.
type ListRow = Pick<Row, 'product_id' | 'device_id' | 'tags' | 'tags_version' | 'enabled' | 'created_at' | 'updated_at'> & { has_secret: number }

function toDevice(r: Row | ListRow): Device {
  return {
    productId: r.product_id,
    deviceId: r.device_id,
    tags: JSON.parse(r.tags) as string[],
    tagsVersion: r.tags_version,
    enabled: r.enabled === 1,
    hasSecret: 'has_secret' in r ? r.has_secret === 1 : r.secret_hash !== null,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  }
}

/** A 32-byte key in a 0600 file: encrypts secrets kept for the northbound link and keys seed digests. */
function loadOrCreateKey(file: string): Buffer {
  if (existsSync(file)) return Buffer.from(readFileSync(file, 'utf8').trim(), 'base64')
  const key = randomBytes(32)
  writeFileSync(file, key.toString('base64') + '\n', { mode: 0o600, flag: 'wx' })
  return key
}
