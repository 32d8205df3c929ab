// The OTA relay (PROTOCOL.md "OTA", issue 11). An `$ota_upgrade` for a native child is held by the
// command router (src/core/command-hold.ts) while the gateway fetches the image once per content
// (md5 + size), verifies it and keeps it in its cache; then the command goes into the device's
// queue with `url` rewritten to a local URL of its own (one per job and device, unguessable, valid
// until ExpiresAt), everything else unchanged. The device fetches from the gateway over HTTP or
// CoAP, also while the hub link is down, and reports its own progress, which passes through. The
// gateway speaks upstream for a device only when the device never got the chance: -1 its own
// download failed, -2 the image did not match, -4 quota, expiry before delivery, a mapped device.
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream, mkdirSync, readFileSync, rmSync, statfsSync, statSync } from 'node:fs'
import { open, rename, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Transform, type Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { AdapterMetrics } from '../core/adapter-context.js'
import type { CommandHold, HeldCommands } from '../core/command-hold.js'
import { ErrorCodes } from '../core/errors.js'
import { isDamagedDatabase, moveAside } from '../core/damaged-file.js'
import { parseJsonObject } from '../core/shadow-doc.js'
import { parseUpTopic } from '../core/hub-topics.js'
import type { LocalFile, LocalFiles } from '../core/local-files.js'
import { RateLimitedLog, type Logger } from '../core/log.js'
import { newMessageId } from '../core/message-id.js'
import type { Command, DeviceRef, Transport, Uplink } from '../core/types.js'
import { deviceKey, parseDeviceKey } from '../core/types.js'
import type { CommandOrigin, StoredCommand } from '../store/commands.js'
import { BandwidthLimit, FetchError, fetchOnce, partBytes } from './image-fetch.js'
import { OtaStore, type ImageRow, type TargetRow } from './ota-store.js'
import type { OtaJobView } from './ota-types.js'

export type { OtaJobView } from './ota-types.js'
import type { OtaConfig } from './schema.js'

export const OTA_COMMAND = '$ota_upgrade'
// update_ota_status progress codes (PROTOCOL.md "OTA").
const DOWNLOAD_FAILED = -1
const CHECKSUM_FAILED = -2
const OTHER_ERROR = -4
const SWEEP_MS = 1_000
// Gauges and history trimming every this many sweeps.
const SLOW_SWEEPS = 15
// How long finished targets stay in the job view.
const FINISHED_KEPT_MS = 30 * 86_400_000
const MAX_RETRY_DELAY_MS = 300_000

export interface OtaRelayDeps {
  cfg: OtaConfig
  dataDir: string
  held: HeldCommands
  /** Into the uplink pipeline (the gateway's own update_ota_status for a device). */
  uplink: (up: Uplink) => Promise<void>
  isMapped: (device: DeviceRef) => boolean
  /** The transport a native device was last connected over (its URL is of that kind). */
  transportOf: (device: DeviceRef) => Transport | undefined
  /** The web server's port once it listens (it starts after the adapters), 0 until then. */
  httpPort: () => number
  coapPort: () => number | undefined
  /** The hub's TLS settings (northbound.tls), used for image downloads too. */
  tls: { ca?: string; rejectUnauthorized: boolean }
  /** A command issued by the gateway itself (offline campaigns), through the command router. */
  sendLocal: (cmd: Command) => string
  /** The enabled children of a product carrying a tag (offline tag campaigns). */
  devicesWithTag: (productId: string, tag: string) => DeviceRef[]
  /** Whether the registry has the device (an offline campaign names only known ones); all when absent. */
  isRegistered?: (device: DeviceRef) => boolean
  metrics: AdapterMetrics
  log: Logger
}

interface OtaRequest {
  url: string
  version: string
  size: number
  md5: string
  type: string
  body: Record<string, unknown>
}

/** An offline campaign naming devices the registry does not have (nothing was sent). */
export class UnknownDevices extends Error {
  constructor(readonly devices: DeviceRef[]) {
    super(`no such device: ${devices.map(deviceKey).join(', ')} (GET /api/devices lists the devices this gateway knows)`)
  }
}

/** Why an image is not served: what the device is told upstream. */
export class ImageRefused extends Error {
  constructor(
    readonly progress: number,
    message: string,
  ) {
    super(message)
  }
}


export interface OtaImageView extends ImageRow {
  /** Jobs' targets that still use it (it is not evicted while any does). */
  references: number
  /** The gateway's own download: bytes in hand so far. */
  fetchedBytes?: number
}

export class OtaRelay implements CommandHold, LocalFiles {
  private store!: OtaStore
  private readonly dir: string
  private readonly fetching = new Map<string, Promise<void>>()
  private readonly served = new Map<number, number>()
  private readonly abort = new AbortController()
  private readonly pace: BandwidthLimit
  private readonly warn: RateLimitedLog
  private readonly ca?: Buffer
  private sweepTimer?: NodeJS.Timeout
  private releaseTimer?: NodeJS.Timeout
  private sweeps = 0
  private stopped = false
  private readonly m: {
    downloads: ReturnType<AdapterMetrics['counter']>
    servedBytes: ReturnType<AdapterMetrics['counter']>
    evictions: ReturnType<AdapterMetrics['counter']>
    answered: ReturnType<AdapterMetrics['counter']>
    cacheBytes: ReturnType<AdapterMetrics['gauge']>
    fetchBytes: ReturnType<AdapterMetrics['gauge']>
    targets: ReturnType<AdapterMetrics['gauge']>
  }

  constructor(private readonly d: OtaRelayDeps) {
    this.dir = path.join(d.dataDir, 'ota')
    this.pace = new BandwidthLimit(d.cfg.bandwidthBytesPerSecond)
    this.warn = new RateLimitedLog(d.log)
    this.ca = d.tls.ca ? readFileSync(d.tls.ca) : undefined
    this.m = {
      downloads: d.metrics.counter('downloads_total', "The gateway's own image downloads, by result (ok, download_failed, checksum_failed, quota, disk_full)", ['result']),
      servedBytes: d.metrics.counter('served_bytes_total', 'Image bytes served to devices, by transport', ['transport']),
      evictions: d.metrics.counter('evictions_total', 'Images evicted from the cache to make room for another'),
      answered: d.metrics.counter('gateway_status_total', 'update_ota_status the gateway sent for a device that never got the chance, by progress code', ['progress']),
      cacheBytes: d.metrics.gauge('cache_bytes', 'Bytes of images in the cache (complete and being fetched)'),
      fetchBytes: d.metrics.gauge('fetch_bytes', "Bytes in hand of the gateway's own downloads in progress"),
      targets: d.metrics.gauge('targets', 'Job targets (one per job and device), by state', ['state']),
    }
  }

  async start(): Promise<void> {
    mkdirSync(path.join(this.dir, 'images'), { recursive: true })
    mkdirSync(path.join(this.dir, 'partial'), { recursive: true })
    this.store = this.openStore(path.join(this.dir, 'ota.db'))
    // Downloads that were under way when the gateway stopped (or was killed) resume.
    for (const img of this.store.images()) if (img.state === 'fetching') this.fetch(img)
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_MS).unref()
  }

  /** ota.db, or a new one if it is damaged (the old one moved aside): the gateway runs on either way. */
  private openStore(file: string): OtaStore {
    try {
      return new OtaStore(file)
    } catch (err) {
      if (!isDamagedDatabase(err)) throw err
      const movedTo = moveAside(file)
      this.d.log.error(
        { err, code: ErrorCodes.OTA_QUARANTINED, movedTo },
        `ota.db was damaged: moved aside to ${movedTo} and made anew; its jobs and cached images are forgotten (the hub sends campaigns again, offline ones must be pushed again)`,
      )
      return new OtaStore(file)
    }
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearInterval(this.sweepTimer)
    clearTimeout(this.releaseTimer)
    this.abort.abort()
    await Promise.allSettled([...this.fetching.values()])
    this.flushServed()
    this.store?.close()
  }

  // ---- the command hold -------------------------------------------------------------------------

  takes(cmd: Command, origin: CommandOrigin): boolean {
    return cmd.type === 'cmd' && cmd.name === OTA_COMMAND && (this.d.cfg.relay || origin === 'local')
  }

  held(sc: StoredCommand): void {
    if (this.stopped) return
    const existing = this.store.target(sc.id)
    if (existing) return this.resume(existing)
    const cmd = sc.command
    const req = parseRequest(cmd.payload)
    const status = { type: req?.type ?? '', version: req?.version ?? '' }
    if (!req || 'error' in req) {
      const why = `gateway: ${OTA_COMMAND} payload ${req?.error ?? 'is not a JSON object'} (PROTOCOL.md "OTA": {url, version, size, md5, type})`
      return this.refuse(sc, status, OTHER_ERROR, why)
    }
    if (this.d.isMapped(cmd.device)) return this.refuse(sc, req, OTHER_ERROR, 'gateway: transport cannot carry an image')
    if (req.size > this.d.cfg.maxImageBytes) return this.refuse(sc, req, OTHER_ERROR, `gateway: image of ${req.size} bytes is larger than ota.maxImageBytes (${this.d.cfg.maxImageBytes})`)
    const key = `${req.md5}-${req.size}`
    const now = Date.now()
    const target: TargetRow = {
      commandId: sc.id,
      job: cmd.requestId,
      device: deviceKey(cmd.device),
      imageKey: key,
      version: req.version,
      type: req.type,
      origin: sc.origin,
      expiresAt: cmd.expiresAt ?? Math.floor(now / 1000 + this.d.cfg.jobTtlHours * 3600),
      token: randomBytes(24).toString('base64url'),
      state: 'waiting',
      progress: null,
      bytesServed: 0,
      reason: null,
      payload: cmd.payload.toString('utf8'),
      createdAt: now,
      updatedAt: now,
    }
    const image = this.store.image(key)
    if (!image && !/^https?:\/\//i.test(req.url)) return this.refuse(sc, req, OTHER_ERROR, `gateway: no image ${key} in the cache and ${JSON.stringify(req.url)} is not an http(s) URL`)
    this.store.addTarget(target)
    this.d.log.info({ job: target.job, device: target.device, image: key, version: req.version }, image?.state === 'ready' ? 'OTA job: image in the cache' : 'OTA job: waiting for the image')
    if (image?.state === 'ready') return this.releaseWaiting()
    if (!image) {
      const row: ImageRow = { key, md5: req.md5, size: req.size, sha256: null, url: req.url, version: req.version, type: req.type, source: 'hub', state: 'fetching', createdAt: now, lastUsed: now }
      this.store.putImage(row)
      this.fetch(row)
    } else if (!this.fetching.has(key)) {
      this.fetch(image)
    }
  }

  /** After a restart: a target whose command is still held. */
  private resume(t: TargetRow): void {
    if (t.state !== 'waiting') return
    const image = this.store.image(t.imageKey)
    if (image?.state === 'ready') this.releaseWaiting()
    else if (!image) this.fail(t, DOWNLOAD_FAILED, 'gateway: image lost from the cache')
    else if (!this.fetching.has(image.key)) this.fetch(image)
  }

  /**
   * Targets whose image is ready go to their devices, oldest first, as long as fewer than
   * `maxConcurrentDevices` have an image on the way (0 = all at once), and fewer than the job's own
   * limit (its `maxConcurrent`, or `maxConcurrentPerJob`) of the same job: a staged rollout.
   */
  private releaseWaiting(): void {
    // At a start, a download resumed from before can finish before the gateway listens: the
    // device's URL would then carry the configured port (0: not chosen yet), or, for a CoAP device
    // whose endpoint had not started yet, the HTTP one. The web server listens last, after every
    // adapter (src/gateway.ts): released once it does, whatever `ota.httpUrl` says.
    if (!this.d.httpPort()) {
      if (!this.stopped && !this.releaseTimer) {
        this.releaseTimer = setTimeout(() => {
          this.releaseTimer = undefined
          if (!this.stopped) this.releaseWaiting()
        }, 200)
        this.releaseTimer.unref()
      }
      return
    }
    const limit = this.d.cfg.maxConcurrentDevices
    let busy = limit > 0 ? this.store.busyCount() : 0
    const jobBusy = new Map<string, number>()
    for (const t of this.store.targets("state = 'waiting'")) {
      if (limit > 0 && busy >= limit) return
      if (this.store.image(t.imageKey)?.state !== 'ready') continue
      const jobLimit = this.store.jobLimit(t.job) ?? this.d.cfg.maxConcurrentPerJob
      if (jobLimit > 0) {
        const n = jobBusy.get(t.job) ?? this.store.busyCount(t.job)
        if (n >= jobLimit) continue
        jobBusy.set(t.job, n + 1)
      }
      this.release(t)
      busy++
    }
  }

  /** The device's command into its queue, `url` now the device's own local URL. */
  private release(t: TargetRow): void {
    if (t.expiresAt * 1000 < Date.now()) return this.expire(t)
    // Checked again here: at the hub's first connect (and at a restart) mapped adapters may not have started yet.
    if (this.d.isMapped(parseDeviceKey(t.device))) return this.fail(t, OTHER_ERROR, 'gateway: transport cannot carry an image')
    const body = parseJsonObject(Buffer.from(t.payload)) ?? {}
    const payload = Buffer.from(JSON.stringify({ ...body, url: this.localUrl(t) }))
    // The command first: a crash in between leaves a released command and a waiting target, which
    // the next start releases again (a no-op), never a held command nobody releases.
    if (!this.d.held.release(t.commandId, payload)) this.d.log.debug({ job: t.job, device: t.device }, 'OTA command was no longer held')
    this.store.setTarget(t.commandId, 'queued')
    this.store.touchImage(t.imageKey)
  }

  private localUrl(t: TargetRow): string {
    const transport = this.d.transportOf(parseDeviceKey(t.device))
    const host = this.d.cfg.advertiseHost ?? advertisedAddress()
    const hostPart = host.includes(':') ? `[${host}]` : host
    const coapPort = this.d.coapPort()
    if (transport === 'coap' && (this.d.cfg.coapUrl || coapPort)) return `${(this.d.cfg.coapUrl ?? `coap://${hostPart}:${coapPort}`).replace(/\/$/, '')}/ota/${t.token}`
    return `${(this.d.cfg.httpUrl ?? `http://${hostPart}:${this.d.httpPort()}`).replace(/\/$/, '')}/ota/${t.token}`
  }

  /** The router handed the released command to the device. */
  delivered(sc: StoredCommand): void {
    if (sc.command.name !== OTA_COMMAND || this.stopped) return
    const t = this.store.target(sc.id)
    if (t?.state === 'queued') this.store.setTarget(t.commandId, 'delivered')
  }

  private refuse(sc: StoredCommand, req: { type: string; version: string }, progress: number, desc: string): void {
    this.warn.warn(`refuse:${desc}`, { device: deviceKey(sc.command.device), requestId: sc.command.requestId, progress, code: ErrorCodes.OTA_FAILED }, `OTA job refused: ${desc}`)
    this.d.held.finish(sc.id, 'failed', desc)
    if (sc.origin !== 'local') this.answer(sc.command.device, req, progress, desc)
  }

  /** A target that will never get its command: finished in the router, answered upstream for the device. */
  private fail(t: TargetRow, progress: number, desc: string): void {
    this.store.setTarget(t.commandId, 'failed', desc)
    this.d.held.finish(t.commandId, 'failed', desc)
    if (t.origin !== 'local') this.answer(parseDeviceKey(t.device), t, progress, desc)
    this.releaseImageIfUnused(t.imageKey)
  }

  private expire(t: TargetRow): void {
    const undelivered = t.state === 'waiting' || t.state === 'queued'
    const desc = 'gateway: the job expired before the device got it'
    this.store.setTarget(t.commandId, 'expired', undelivered ? desc : 'ExpiresAt passed')
    if (t.state === 'waiting') this.d.held.finish(t.commandId, 'expired', desc)
    // A queued one is recorded as expired by the router itself; the device got no chance either way.
    if (undelivered && t.origin !== 'local') this.answer(parseDeviceKey(t.device), t, OTHER_ERROR, desc)
    this.releaseImageIfUnused(t.imageKey)
  }

  /** update_ota_status on the device's behalf (PROTOCOL.md "OTA"); `desc` starts with `gateway:`. */
  private answer(device: DeviceRef, req: { type: string; version: string }, progress: number, desc: string): void {
    this.m.answered.inc({ progress: String(progress) })
    const up: Uplink = {
      topic: { kind: 'update_ota_status', productId: device.productId, deviceId: device.deviceId, messageId: newMessageId() },
      payload: Buffer.from(JSON.stringify({ type: req.type, version: req.version, progress, desc })),
      transport: 'internal',
      receivedAt: Date.now(),
    }
    this.d.uplink(up).catch((err: Error) => this.warn.warn('answer', { err: err.message, code: ErrorCodes.STORE_FAILED }, 'OTA status for a device not stored'))
  }

  // ---- the gateway's own download ---------------------------------------------------------------

  private paths(key: string): { part: string; meta: string; file: string } {
    return { part: path.join(this.dir, 'partial', `${key}.part`), meta: path.join(this.dir, 'partial', `${key}.json`), file: path.join(this.dir, 'images', `${key}.bin`) }
  }

  private fetch(img: ImageRow): void {
    if (this.fetching.has(img.key)) return
    const work = this.download(img)
      .then(() => {
        this.m.downloads.inc({ result: 'ok' })
        this.releaseWaiting()
      })
      .catch((err: Error) => this.imageFailed(img, err))
      .catch((err: Error) => this.d.log.error({ err, image: img.key, code: ErrorCodes.OTA_FAILED }, 'OTA image bookkeeping failed'))
      .finally(() => this.fetching.delete(img.key))
    this.fetching.set(img.key, work)
  }

  private async download(img: ImageRow): Promise<void> {
    const p = this.paths(img.key)
    this.makeRoom(img)
    const have = await partBytes(p.part)
    const free = diskFree(this.dir)
    if (free !== undefined && free < img.size - have) throw Object.assign(new ImageRefused(OTHER_ERROR, `gateway: data disk full (${free} bytes free, the image needs ${img.size - have} more)`), { result: 'disk_full' })
    const { download } = this.d.cfg
    for (let attempt = 1; ; attempt++) {
      try {
        this.d.log.info({ image: img.key, url: redact(img.url), attempt, resumeAt: await partBytes(p.part) }, 'OTA image download')
        await fetchOnce(
          { url: img.url, partPath: p.part, metaPath: p.meta, expectedSize: img.size },
          { idleTimeoutMs: download.idleTimeoutSeconds * 1000, ca: this.ca, rejectUnauthorized: this.d.tls.rejectUnauthorized, pace: this.pace },
          this.abort.signal,
        )
        break
      } catch (err) {
        if (this.stopped) throw err
        const e = err instanceof FetchError ? err : new FetchError((err as Error).message, 'download', false)
        if (e.kind === 'size') throw new ImageRefused(CHECKSUM_FAILED, `gateway: size mismatch: ${e.message}`)
        if (e.permanent || attempt >= download.attempts) throw new ImageRefused(DOWNLOAD_FAILED, `gateway: download of ${redact(img.url)} failed after ${attempt} attempt(s): ${e.message}`)
        // Exponential back-off with full jitter: many gateways cut by the same outage do not return in step.
        const delay = Math.random() * Math.min(MAX_RETRY_DELAY_MS, download.retryBaseSeconds * 1000 * 2 ** (attempt - 1))
        this.warn.warn(`retry:${img.key}`, { image: img.key, attempt, err: e.message, retryInMs: Math.round(delay) }, 'OTA image download failed; retrying where it stopped')
        await new Promise((r) => setTimeout(r, delay))
        if (this.stopped) throw e
      }
    }
    const sums = await hashFile(p.part)
    if (sums.md5 !== img.md5) {
      await rm(p.part, { force: true })
      throw new ImageRefused(CHECKSUM_FAILED, `gateway: md5 mismatch: the image is ${sums.md5}, the command says ${img.md5}`)
    }
    // Durable before it is served: fsync'd by fetchOnce, renamed atomically, the folder fsync'd.
    await rename(p.part, p.file)
    await fsyncDir(path.dirname(p.file))
    await rm(p.meta, { force: true })
    this.store.putImage({ ...img, sha256: sums.sha256, state: 'ready', lastUsed: Date.now() })
    this.d.log.info({ image: img.key, sha256: sums.sha256, bytes: img.size }, 'OTA image verified and cached')
  }

  private async imageFailed(img: ImageRow, err: Error): Promise<void> {
    if (this.stopped) return // resumed at the next start
    const refused = err instanceof ImageRefused ? err : new ImageRefused(DOWNLOAD_FAILED, `gateway: ${err.message}`)
    const result = (err as { result?: string }).result ?? (refused.progress === CHECKSUM_FAILED ? 'checksum_failed' : refused.progress === OTHER_ERROR ? 'quota' : 'download_failed')
    this.m.downloads.inc({ result })
    this.d.log.warn({ image: img.key, url: redact(img.url), err: refused.message, code: ErrorCodes.OTA_FAILED }, 'OTA image not cached; the jobs waiting for it are answered upstream')
    // Nothing of it is kept: a later job for the same content starts afresh (perhaps from a corrected URL).
    const p = this.paths(img.key)
    await rm(p.part, { force: true })
    await rm(p.meta, { force: true })
    this.store.removeImage(img.key)
    for (const t of this.store.targets("image_key = ? AND state = 'waiting'", img.key)) this.fail(t, refused.progress, refused.message)
  }

  /** Make room for `img` under the quota: evict the least recently used images no job uses; refuse if that is not enough. */
  private makeRoom(img: ImageRow): void {
    const quota = this.d.cfg.cacheMaxBytes
    let used = this.store.images().reduce((n, i) => (i.key === img.key ? n : n + i.size), 0)
    if (used + img.size <= quota) return
    for (const victim of this.store.unreferenced()) {
      if (victim.key === img.key) continue
      rmSync(this.paths(victim.key).file, { force: true })
      this.store.removeImage(victim.key)
      this.m.evictions.inc()
      this.d.log.info({ image: victim.key, bytes: victim.size, for: img.key }, 'OTA image evicted from the cache to make room')
      used -= victim.size
      if (used + img.size <= quota) return
    }
    throw new ImageRefused(OTHER_ERROR, `gateway: image cache quota refused the image (${img.size} bytes; ota.cacheMaxBytes ${quota}, ${used} bytes used by pending jobs)`)
  }

  /** An image of the hub's no job needs any more is deleted (an uploaded one stays, evictable). */
  private releaseImageIfUnused(key: string): void {
    const img = this.store.image(key)
    if (!img || img.state !== 'ready' || img.source !== 'hub') return
    if (this.store.activeTargets('image_key = ?', key).length > 0) return
    rmSync(this.paths(key).file, { force: true })
    this.store.removeImage(key)
    this.d.log.info({ image: key }, 'OTA image released: no job needs it any more')
  }

  // ---- serving ----------------------------------------------------------------------------------

  open(token: string): LocalFile | undefined {
    if (this.stopped) return undefined
    const t = this.store.byToken(token)
    if (!t || !['queued', 'delivered', 'downloading', 'reported'].includes(t.state) || t.expiresAt * 1000 < Date.now()) return undefined
    const img = this.store.image(t.imageKey)
    if (!img || img.state !== 'ready' || !img.sha256) return undefined
    return {
      path: this.paths(img.key).file,
      size: img.size,
      etag: img.sha256.slice(0, 16),
      served: (bytes, transport) => {
        this.m.servedBytes.inc({ transport }, bytes)
        // Counted in memory, written by the sweep: the stored count is the base once the last sweep took it.
        this.served.set(t.commandId, (this.served.get(t.commandId) ?? this.store.target(t.commandId)?.bytesServed ?? 0) + bytes)
        if (t.state === 'queued' || t.state === 'delivered') {
          t.state = 'downloading'
          this.store.setTarget(t.commandId, 'downloading')
        }
      },
    }
  }

  private flushServed(): void {
    for (const [id, bytes] of this.served) this.store.setServed(id, bytes)
    this.served.clear()
  }

  // ---- what the devices report ------------------------------------------------------------------

  /** Messages that became durable on their way to the hub: the devices' own OTA progress and status. */
  observe(rows: readonly { topic: string; payload: Buffer }[]): void {
    if (this.stopped) return
    for (const row of rows) {
      if (!row.topic.startsWith('update_')) continue
      const t = parseUpTopic(row.topic)
      if (!t || (t.kind !== 'update_ota_status' && t.kind !== 'update_status')) continue
      const active = this.store.activeTargets('device = ?', deviceKey(t))
      if (active.length === 0) continue
      const body = parseJsonObject(row.payload)
      if (!body) continue
      if (t.kind === 'update_ota_status') this.progress(active, body)
      else this.status(active, body)
    }
  }

  private progress(active: TargetRow[], body: Record<string, unknown>): void {
    const { progress, version, desc } = body
    if (typeof progress !== 'number' || (typeof desc === 'string' && desc.startsWith('gateway:'))) return
    const t = active.filter((x) => version === undefined || x.version === version).at(-1)
    if (!t) return
    this.store.setProgress(t.commandId, progress)
    if (progress < 0) {
      this.store.setTarget(t.commandId, 'failed', `device: ${typeof desc === 'string' ? desc : `progress ${progress}`}`)
      this.releaseImageIfUnused(t.imageKey)
    } else if (t.state !== 'waiting' && t.state !== 'queued') {
      this.store.setTarget(t.commandId, 'reported')
    }
  }

  /** Success is judged only by the device's update_status carrying the new version (PROTOCOL.md). */
  private status(active: TargetRow[], body: Record<string, unknown>): void {
    const values = new Set<unknown>()
    for (const v of Object.values(body)) {
      values.add(v)
      if (v && typeof v === 'object') for (const w of Object.values(v)) values.add(w)
    }
    for (const t of active) {
      if (t.state === 'waiting' || t.state === 'queued' || !values.has(t.version)) continue
      this.store.setTarget(t.commandId, 'done', `reported version ${t.version}`)
      this.d.log.info({ job: t.job, device: t.device, version: t.version }, 'OTA done: the device reports the new version')
      this.releaseImageIfUnused(t.imageKey)
    }
  }

  // ---- housekeeping -----------------------------------------------------------------------------

  private sweep(): void {
    if (this.stopped) return
    try {
      this.flushServed()
      const now = Date.now()
      for (const t of this.store.activeTargets('expires_at * 1000 < ?', now)) this.expire(t)
      // Slots freed by devices that finished, failed or expired go to the next ones waiting.
      this.releaseWaiting()
      if (this.sweeps++ % SLOW_SWEEPS === 0) {
        this.store.trim(now - FINISHED_KEPT_MS)
        this.updateGauges()
      }
    } catch (err) {
      this.warn.warn('sweep', { err: (err as Error).message, code: ErrorCodes.OTA_FAILED }, 'OTA housekeeping failed')
    }
  }

  private updateGauges(): void {
    this.m.cacheBytes.set(this.store.images().reduce((n, i) => n + i.size, 0))
    this.m.targets.reset()
    for (const t of this.store.targets()) this.m.targets.inc({ state: t.state })
    let fetched = 0
    for (const key of this.fetching.keys()) fetched += this.fetchedSync(key)
    this.m.fetchBytes.set(fetched)
  }

  private fetchedSync(key: string): number {
    try {
      return statSync(this.paths(key).part).size
    } catch {
      return 0
    }
  }

  /**
   * The gateway's own downloads for its update_status (PROTOCOL.md keeps device progress for the
   * devices; the gateway's fetch shows as the gateway's state): undefined when none runs.
   */
  statusPart(): { downloads: { image: string; version: string; bytes: number; size: number }[] } | undefined {
    if (this.stopped || this.fetching.size === 0) return undefined
    const downloads = [...this.fetching.keys()].flatMap((key) => {
      const img = this.store.image(key)
      return img ? [{ image: key, version: img.version, bytes: this.fetchedSync(key), size: img.size }] : []
    })
    return { downloads }
  }

  // ---- the API: images, jobs ---------------------------------------------------------------------

  async images(): Promise<OtaImageView[]> {
    const out: OtaImageView[] = []
    for (const img of this.store.images()) {
      const view: OtaImageView = { ...img, references: this.store.activeTargets('image_key = ?', img.key).length }
      if (img.state === 'fetching') view.fetchedBytes = await partBytes(this.paths(img.key).part)
      out.push(view)
    }
    return out
  }

  /** A technician's image (offline campaigns): streamed in, md5 and sha256 computed, cached like a fetched one. */
  async upload(body: Readable, meta: { version: string; type: string; length?: number }): Promise<ImageRow> {
    const tmp = path.join(this.dir, 'partial', `upload-${randomBytes(8).toString('hex')}.part`)
    const md5 = createHash('md5')
    const sha = createHash('sha256')
    let size = 0
    const max = this.d.cfg.maxImageBytes
    if (meta.length !== undefined && meta.length > max) throw new ImageRefused(OTHER_ERROR, `image of ${meta.length} bytes is larger than ota.maxImageBytes (${max})`)
    const count = new Transform({
      transform(chunk: Buffer, _e, done) {
        size += chunk.length
        if (size > max) return done(new ImageRefused(OTHER_ERROR, `image larger than ota.maxImageBytes (${max})`))
        md5.update(chunk)
        sha.update(chunk)
        done(null, chunk)
      },
    })
    try {
      await pipeline(body, count, createWriteStream(tmp))
      const fh = await open(tmp, 'r+')
      await fh.sync().finally(() => fh.close())
      const now = Date.now()
      const row: ImageRow = { key: `${md5.digest('hex')}-${size}`, md5: '', size, sha256: sha.digest('hex'), url: 'upload', version: meta.version, type: meta.type, source: 'upload', state: 'ready', createdAt: now, lastUsed: now }
      row.md5 = row.key.split('-')[0]
      this.makeRoom(row)
      await rename(tmp, this.paths(row.key).file)
      await fsyncDir(path.join(this.dir, 'images'))
      this.store.putImage(row)
      this.d.log.info({ image: row.key, sha256: row.sha256, version: row.version }, 'OTA image uploaded')
      // Jobs that waited for this very content (a download of it under way or failed) can go now.
      this.releaseWaiting()
      return this.store.image(row.key)!
    } finally {
      await rm(tmp, { force: true })
    }
  }

  /**
   * An offline campaign: `$ota_upgrade` for each device (or each child carrying the tag) as the
   * hub would send it, issued by the gateway (origin 'local'), then the same flow as a hub job.
   */
  createJob(spec: { image: string; devices?: DeviceRef[]; tag?: { productId: string; tag: string }; expiresAt?: number; maxConcurrent?: number }): { job: string; devices: string[] } {
    const img = this.store.images().find((i) => i.state === 'ready' && (i.key === spec.image || i.md5 === spec.image.toLowerCase()))
    if (!img) throw new ImageRefused(OTHER_ERROR, `no cached image ${spec.image}: upload it first (iothub-edge ota upload FILE, or POST /api/ota/images); iothub-edge ota images lists the cached ones`)
    // A mistyped device would otherwise get a job that waits for it forever.
    const unknown = (spec.devices ?? []).filter((d) => this.d.isRegistered?.(d) === false)
    if (unknown.length) throw new UnknownDevices(unknown)
    const devices = [...(spec.devices ?? []), ...(spec.tag ? this.d.devicesWithTag(spec.tag.productId, spec.tag.tag) : [])]
    const job = newMessageId()
    // Before the commands: each is held (and may be released) as it is sent.
    if (spec.maxConcurrent !== undefined) this.store.setJobLimit(job, spec.maxConcurrent)
    const payload = Buffer.from(JSON.stringify({ url: `local:${img.key}`, version: img.version, size: img.size, md5: img.md5, type: img.type }))
    const sent: string[] = []
    for (const device of devices) {
      const outcome = this.d.sendLocal({ type: 'cmd', device, name: OTA_COMMAND, encoding: 'plain', requestId: job, expiresAt: spec.expiresAt, payload })
      if (outcome === 'queued') sent.push(deviceKey(device))
    }
    return { job, devices: sent }
  }

  jobs(): OtaJobView[] {
    const byJob = new Map<string, OtaJobView>()
    for (const t of this.store.targets()) {
      let j = byJob.get(t.job)
      if (!j) {
        const maxConcurrent = this.store.jobLimit(t.job) ?? this.d.cfg.maxConcurrentPerJob
        byJob.set(t.job, (j = { job: t.job, origin: t.origin, version: t.version, type: t.type, image: t.imageKey, expiresAt: t.expiresAt, maxConcurrent, devices: [] }))
      }
      j.devices.push({ device: t.device, state: t.state, bytesServed: this.served.get(t.commandId) ?? t.bytesServed, progress: t.progress, reason: t.reason })
    }
    return [...byJob.values()]
  }
}


function parseRequest(payload: Buffer): OtaRequest | { error: string; type?: string; version?: string } | undefined {
  const body = parseJsonObject(payload)
  if (!body) return undefined
  const { url, version, size, md5, type } = body
  const partial = { type: typeof type === 'string' ? type : '', version: typeof version === 'string' ? version : '' }
  if (typeof url !== 'string' || url === '') return { error: 'has no url', ...partial }
  if (typeof version !== 'string' || typeof type !== 'string') return { error: 'needs version and type as strings', ...partial }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) return { error: 'needs size as a whole number of bytes', ...partial }
  if (typeof md5 !== 'string' || !/^[0-9a-fA-F]{32}$/.test(md5)) return { error: 'needs md5 as 32 hex digits', ...partial }
  return { url, version, size, md5: md5.toLowerCase(), type, body }
}

async function hashFile(file: string): Promise<{ md5: string; sha256: string }> {
  const md5 = createHash('md5')
  const sha = createHash('sha256')
  for await (const chunk of createReadStream(file)) {
    md5.update(chunk as Buffer)
    sha.update(chunk as Buffer)
  }
  return { md5: md5.digest('hex'), sha256: sha.digest('hex') }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

function diskFree(dir: string): number | undefined {
  try {
    const s = statfsSync(dir)
    return s.bavail * s.bsize
  } catch {
    return undefined
  }
}

// Credentials in an image URL (user:password@host) never reach the log.
function redact(url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    u.search = u.search ? '?…' : ''
    return u.toString()
  } catch {
    return '(not a URL)'
  }
}

/** The first non-loopback IPv4 address: what devices on the LAN reach the gateway at, unless ota.advertiseHost says. */
function advertisedAddress(): string {
  for (const addrs of Object.values(os.networkInterfaces())) for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address
  return '127.0.0.1'
}

