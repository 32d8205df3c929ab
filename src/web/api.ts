// REST API and metrics (fastify). Everything under /api except /api/health needs the bearer token.
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import path from 'node:path'
import type { Gateway } from '../core/gateway.js'
import { isId } from '../northbound/hub-topics.js'

const TOKEN_FILE = 'api-token'
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
    writeFileSync(path.join(this.gw.cfg.gateway.dataDir, RUNTIME_FILE), JSON.stringify(runtime), { mode: 0o600 })
  }

  async stop(): Promise<void> {
    rmSync(path.join(this.gw.cfg.gateway.dataDir, RUNTIME_FILE), { force: true })
    await this.app?.close()
  }
}
