// REST API and metrics (fastify). Everything under /api except /api/health needs the bearer token.
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import path from 'node:path'
import type { Gateway } from '../core/gateway.js'
import { isId } from '../core/hub-topics.js'

const TOKEN_FILE = 'api-token'
// How long a local RPC waits for the device's reply (the hub's own limit is ~5 s).
const RPC_WAIT_MS = 5_000
export const RUNTIME_FILE = 'runtime.json'

/** Where a running gateway can be reached, for the CLI acting on the same data dir. */
export interface RuntimeInfo {
  pid: number
  httpPort: number
}

export function readApiToken(dataDir: string): string | undefined {
  const f = path.join(dataDir, TOKEN_FILE)
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : undefined
}

function loadOrCreateToken(gw: Gateway): string {
  if (gw.cfg.http.apiToken) return gw.cfg.http.apiToken
  const existing = readApiToken(gw.cfg.gateway.dataDir)
  if (existing) return existing
  const token = randomBytes(24).toString('base64url')
  const file = path.join(gw.cfg.gateway.dataDir, TOKEN_FILE)
  writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' })
  // Printed once, on first start, so the operator can copy it; afterwards it is only in the 0600 file.
  process.stdout.write(`API token generated (stored in ${file}): ${token}\n`)
  return token
}

interface DeviceParams {
  p: string
  d: string
}

export class HttpApi {
  private app?: FastifyInstance
  private boundPort = 0

  constructor(private readonly gw: Gateway) {}

  get port(): number {
    return this.boundPort
  }

  build(): FastifyInstance {
    const gw = this.gw
    const token = Buffer.from(loadOrCreateToken(gw))
    const app = Fastify({ logger: false, bodyLimit: 1 << 20 })

    app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
      const url = req.url.split('?')[0]
      if (!url.startsWith('/api/') || url === '/api/health') return
      const got = Buffer.from((req.headers.authorization ?? '').replace(/^Bearer /i, ''))
      if (got.length !== token.length || !timingSafeEqual(got, token)) {
        return reply.code(401).send({ error: 'unauthorized', message: 'send Authorization: Bearer <token> (see {dataDir}/api-token)' })
      }
    })

    app.get('/api/health', async (_req, reply) => {
      const h = gw.health()
      const nb = gw.bridge.status()
      const s = gw.outbox.stats()
      return reply.code(h.status === 'ok' ? 200 : 503).send({
        status: h.status,
        reasons: h.reasons,
        northbound: { configured: nb.configured, connected: nb.connected, since: nb.since, links: nb.links, linksConnected: nb.linksConnected },
        outbox: { messages: s.messages, bytes: s.bytes, oldestAgeMs: s.oldestAgeMs, maxBytes: s.maxBytes },
        clock: { offsetMs: gw.clock.offsetMs, measuredAt: gw.clock.lastSample?.measuredAt ?? null },
      })
    })

    app.get('/metrics', async (_req, reply) => {
      gw.updateGauges()
      return reply.type(gw.metrics.registry.contentType).send(await gw.metrics.registry.metrics())
    })

    app.get('/api/outbox', async () => {
      const s = gw.outbox.stats()
      return { ...s }
    })

    app.get('/api/devices', async () => ({ devices: gw.registry.list() }))

    app.post<{ Body: { productId?: unknown; deviceId?: unknown; secret?: unknown; tags?: unknown; enabled?: unknown } }>(
      '/api/devices',
      async (req, reply) => {
        const b = req.body ?? {}
        if (!isId(b.productId as string) || !isId(b.deviceId as string)) {
          return reply.code(400).send({ error: 'bad_request', message: 'productId and deviceId: 1-64 of [A-Za-z0-9_-]' })
        }
        if (b.secret !== undefined && (typeof b.secret !== 'string' || b.secret.length === 0)) {
          return reply.code(400).send({ error: 'bad_request', message: 'secret must be a non-empty string' })
        }
        if (b.tags !== undefined && !(Array.isArray(b.tags) && b.tags.every((t) => typeof t === 'string'))) {
          return reply.code(400).send({ error: 'bad_request', message: 'tags must be an array of strings' })
        }
        try {
          const r = await gw.registry.add({
            productId: b.productId as string,
            deviceId: b.deviceId as string,
            secret: b.secret as string | undefined,
            tags: b.tags as string[] | undefined,
            enabled: b.enabled !== false,
          })
          // The secret is returned this once (it is only stored hashed).
          return reply.code(201).send({ device: r.device, secret: r.secret })
        } catch (err) {
          if ((err as { code?: string }).code === 'EXISTS') return reply.code(409).send({ error: 'exists', message: (err as Error).message })
          throw err
        }
      },
    )

    app.get<{ Params: DeviceParams }>('/api/devices/:p/:d', async (req, reply) => {
      const d = gw.registry.get({ productId: req.params.p, deviceId: req.params.d })
      if (!d) return reply.code(404).send({ error: 'not_found' })
      const connections = gw.connections.list().filter((c) => c.productId === d.productId && c.deviceId === d.deviceId)
      return { device: d, online: gw.broker.owns(d), connections }
    })

    app.patch<{ Params: DeviceParams; Body: { enabled?: unknown; secret?: unknown } }>('/api/devices/:p/:d', async (req, reply) => {
      const ref = { productId: req.params.p, deviceId: req.params.d }
      const b = req.body ?? {}
      if (b.enabled === undefined && b.secret === undefined) {
        return reply.code(400).send({ error: 'bad_request', message: 'send {"enabled": true|false} and/or {"secret": "..."}' })
      }
      if (b.enabled !== undefined && typeof b.enabled !== 'boolean') return reply.code(400).send({ error: 'bad_request', message: 'enabled must be a boolean' })
      if (!gw.registry.get(ref)) return reply.code(404).send({ error: 'not_found' })
      if (typeof b.secret === 'string' && b.secret) await gw.registry.setSecret(ref, b.secret)
      if (typeof b.enabled === 'boolean') gw.registry.setEnabled(ref, b.enabled)
      return { device: gw.registry.get(ref) }
    })

    app.get<{ Params: DeviceParams }>('/api/devices/:p/:d/shadow', async (req, reply) => {
      const ref = { productId: req.params.p, deviceId: req.params.d }
      if (!gw.registry.get(ref)) return reply.code(404).send({ error: 'not_found' })
      return { shadow: gw.shadows.get(ref) }
    })

    app.get<{ Params: DeviceParams }>('/api/devices/:p/:d/commands', async (req, reply) => {
      const ref = { productId: req.params.p, deviceId: req.params.d }
      if (!gw.registry.get(ref)) return reply.code(404).send({ error: 'not_found' })
      return {
        commands: gw.router.history(ref).map((c) => ({
          id: c.id,
          type: c.command.type,
          name: c.command.name,
          requestId: c.command.requestId,
          encoding: c.command.encoding,
          expiresAt: c.command.expiresAt ?? null,
          origin: c.origin,
          state: c.state,
          reason: c.reason ?? null,
          createdAt: c.createdAt,
          updatedAt: c.updatedAt,
          payload: c.command.payload.toString('utf8'),
          reply: c.reply ? c.reply.toString('utf8') : null,
        })),
      }
    })

    // A technician's command to one device. Replies stay local; `rpc: true` waits for the reply.
    app.post<{ Params: DeviceParams; Body: { name?: unknown; payload?: unknown; encoding?: unknown; ttl?: unknown; rpc?: unknown } }>(
      '/api/devices/:p/:d/commands',
      async (req, reply) => {
        const ref = { productId: req.params.p, deviceId: req.params.d }
        const b = req.body ?? {}
        if (!gw.registry.get(ref)) return reply.code(404).send({ error: 'not_found' })
        if (typeof b.name !== 'string' || !/^[A-Za-z0-9_.:-]{1,64}$/.test(b.name)) {
          return reply.code(400).send({
            error: 'bad_request',
            message: 'name: 1-64 of [A-Za-z0-9_.:-]; names starting with $ are internal to the protocol and cannot be sent',
          })
        }
        const encoding = b.encoding ?? 'plain'
        if (encoding !== 'plain' && encoding !== 'base64') return reply.code(400).send({ error: 'bad_request', message: 'encoding: plain or base64' })
        if (b.ttl !== undefined && !(typeof b.ttl === 'number' && Number.isInteger(b.ttl) && b.ttl > 0)) {
          return reply.code(400).send({ error: 'bad_request', message: 'ttl: a positive number of seconds' })
        }
        const raw = b.payload === undefined ? '' : typeof b.payload === 'string' ? b.payload : JSON.stringify(b.payload)
        const cmd = {
          type: b.rpc === true ? ('rpc' as const) : ('cmd' as const),
          device: ref,
          name: b.name,
          encoding: encoding as 'plain' | 'base64',
          requestId: randomBytes(12).toString('hex'),
          expiresAt: typeof b.ttl === 'number' ? Math.floor(Date.now() / 1000) + b.ttl : undefined,
          payload: Buffer.from(raw),
        }
        const replied = cmd.type === 'rpc' ? gw.router.waitForReply(ref, cmd.requestId, RPC_WAIT_MS) : undefined
        const outcome = gw.router.accept(cmd, 'local')
        if (outcome === 'rpc_offline') return reply.code(409).send({ error: 'offline', message: 'the device is not connected; RPCs are not queued', requestId: cmd.requestId })
        if (!replied) return reply.code(202).send({ requestId: cmd.requestId, state: outcome })
        const answer = await replied
        if (!answer) return reply.code(504).send({ error: 'timeout', message: `no reply within ${RPC_WAIT_MS / 1000} s`, requestId: cmd.requestId })
        return { requestId: cmd.requestId, state: 'replied', reply: answer.toString('utf8') }
      },
    )

    app.delete<{ Params: DeviceParams }>('/api/devices/:p/:d', async (req, reply) => {
      if (!gw.registry.remove({ productId: req.params.p, deviceId: req.params.d })) return reply.code(404).send({ error: 'not_found' })
      return reply.code(204).send()
    })

    return app
  }

  async start(): Promise<void> {
    this.app = this.build()
    await this.app.listen({ host: this.gw.cfg.http.host, port: this.gw.cfg.http.port })
    const addr = this.app.server.address()
    this.boundPort = typeof addr === 'object' && addr ? addr.port : this.gw.cfg.http.port
    const runtime: RuntimeInfo = { pid: process.pid, httpPort: this.boundPort }
    try {
      writeFileSync(path.join(this.gw.cfg.gateway.dataDir, RUNTIME_FILE), JSON.stringify(runtime), { mode: 0o600 })
    } catch (err) {
      // A full disk must not keep the gateway from starting; only the CLI's shortcut is lost.
      this.gw.log.warn({ err: (err as Error).message }, `could not write ${RUNTIME_FILE}: the devices CLI will not find this running gateway`)
    }
  }

  async stop(): Promise<void> {
    rmSync(path.join(this.gw.cfg.gateway.dataDir, RUNTIME_FILE), { force: true })
    await this.app?.close()
  }
}
