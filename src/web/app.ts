// Temporary: replaced by the web rework (routes as plugins with schemas).
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { randomBytes, timingSafeEqual } from 'node:crypto'
import type { WebDeps } from './deps.js'
import { isId } from '../core/hub-topics.js'

const RPC_WAIT_MS = 5_000

interface DeviceParams {
  p: string
  d: string
}

export function buildApp(deps: WebDeps): FastifyInstance {
    const token = Buffer.from(deps.apiToken)
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
      const h = deps.health()
      return reply.code(h.status === 'ok' ? 200 : 503).send(h)
    })

    app.get('/metrics', async (_req, reply) => {
      const m = await deps.metrics()
      return reply.type(m.contentType).send(m.body)
    })

    app.get('/api/outbox', async () => {
      const s = deps.outboxStats()
      return { ...s }
    })

    app.get('/api/devices', async () => ({ devices: deps.devices.list() }))

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
          const r = await deps.devices.add({
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
      const d = deps.devices.get({ productId: req.params.p, deviceId: req.params.d })
      if (!d) return reply.code(404).send({ error: 'not_found' })
      return { device: d, online: deps.devices.online(d), connections: deps.devices.connections(d) }
    })

    app.patch<{ Params: DeviceParams; Body: { enabled?: unknown; secret?: unknown } }>('/api/devices/:p/:d', async (req, reply) => {
      const ref = { productId: req.params.p, deviceId: req.params.d }
      const b = req.body ?? {}
      if (b.enabled === undefined && b.secret === undefined) {
        return reply.code(400).send({ error: 'bad_request', message: 'send {"enabled": true|false} and/or {"secret": "..."}' })
      }
      if (b.enabled !== undefined && typeof b.enabled !== 'boolean') return reply.code(400).send({ error: 'bad_request', message: 'enabled must be a boolean' })
      if (!deps.devices.get(ref)) return reply.code(404).send({ error: 'not_found' })
      if (typeof b.secret === 'string' && b.secret) await deps.devices.setSecret(ref, b.secret)
      if (typeof b.enabled === 'boolean') deps.devices.setEnabled(ref, b.enabled)
      return { device: deps.devices.get(ref) }
    })

    app.get<{ Params: DeviceParams }>('/api/devices/:p/:d/shadow', async (req, reply) => {
      const ref = { productId: req.params.p, deviceId: req.params.d }
      if (!deps.devices.get(ref)) return reply.code(404).send({ error: 'not_found' })
      return { shadow: deps.devices.shadow(ref) }
    })

    app.get<{ Params: DeviceParams }>('/api/devices/:p/:d/commands', async (req, reply) => {
      const ref = { productId: req.params.p, deviceId: req.params.d }
      if (!deps.devices.get(ref)) return reply.code(404).send({ error: 'not_found' })
      return {
        commands: deps.commands.history(ref).map((c) => ({
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
        if (!deps.devices.get(ref)) return reply.code(404).send({ error: 'not_found' })
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
        const replied = cmd.type === 'rpc' ? deps.commands.waitForReply(ref, cmd.requestId, RPC_WAIT_MS) : undefined
        const outcome = deps.commands.send(cmd)
        if (outcome === 'rpc_offline') return reply.code(409).send({ error: 'offline', message: 'the device is not connected; RPCs are not queued', requestId: cmd.requestId })
        if (!replied) return reply.code(202).send({ requestId: cmd.requestId, state: outcome })
        const answer = await replied
        if (!answer) return reply.code(504).send({ error: 'timeout', message: `no reply within ${RPC_WAIT_MS / 1000} s`, requestId: cmd.requestId })
        return { requestId: cmd.requestId, state: 'replied', reply: answer.toString('utf8') }
      },
    )

    app.delete<{ Params: DeviceParams }>('/api/devices/:p/:d', async (req, reply) => {
      if (!deps.devices.remove({ productId: req.params.p, deviceId: req.params.d })) return reply.code(404).send({ error: 'not_found' })
      return reply.code(204).send()
    })

    for (const r of deps.adapterRoutes) void app.register(r.plugin, { prefix: `/api/adapters/${r.adapter}` })
    return app
}
