// `iothub-edge hub-sim`: a stand-in cloud IoTHub for demos and tests. NOT a production hub: it has
// no persistence, no per-device ACL, and it accepts any client that knows its one optional
// username/password. It is an MQTT broker (aedes) plus the hub behaviour of HubSim, plus a small
// HTTP API to send commands, RPCs, tag commands and shadow changes and to read what arrived.
import net from 'node:net'
import { Aedes } from 'aedes'
import Fastify, { type FastifyInstance } from 'fastify'
import { HubSim } from './hub-sim.js'
import { isId } from '../core/hub-topics.js'

export interface HubSimServerOptions {
  host: string
  mqttPort: number
  httpPort: number
  username?: string
  password?: string
}

export class HubSimServer {
  private aedes?: Aedes
  private server?: net.Server
  private app?: FastifyInstance
  sim?: HubSim
  mqttPort = 0
  httpPort = 0

  constructor(private readonly o: HubSimServerOptions) {}

  async start(): Promise<void> {
    const { username, password } = this.o
    this.aedes = new Aedes({
      maxClientsIdLength: 256,
      authenticate: (_client, u, p, cb) => {
        const ok = !username || (u === username && p?.toString() === password) || u === '$hub-sim'
        cb(ok ? null : Object.assign(new Error('bad credentials'), { returnCode: 4 as const }), ok)
      },
    })
    await this.aedes.listen()
    const aedes = this.aedes
    this.server = net.createServer((s) => {
      s.setNoDelay(true)
      aedes.handle(s)
    })
    // A port in use rejects here (an 'error' event without a listener would end the process).
    const server = this.server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.o.mqttPort, this.o.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
    this.mqttPort = (this.server.address() as net.AddressInfo).port

    this.sim = new HubSim({ url: `mqtt://127.0.0.1:${this.mqttPort}`, username: '$hub-sim', clientId: 'hub-sim-core' })
    await this.sim.start()
    this.app = this.buildApi(this.sim)
    await this.app.listen({ host: this.o.host, port: this.o.httpPort })
    const addr = this.app.server.address()
    this.httpPort = typeof addr === 'object' && addr ? addr.port : this.o.httpPort
  }

  private buildApi(sim: HubSim): FastifyInstance {
    const app = Fastify({ logger: false })
    type Dev = { p: string; d: string }
    const badId = (...ids: unknown[]): boolean => ids.some((i) => !isId(i as string))

    app.get('/stats', async () => {
      const byKind: Record<string, number> = {}
      for (const u of sim.uploads) if (!u.duplicate) byKind[u.parsed.kind] = (byKind[u.parsed.kind] ?? 0) + 1
      return { uploads: sim.uploads.length, duplicates: sim.uploads.filter((u) => u.duplicate).length, byKind }
    })

    app.get<{ Querystring: { limit?: string } }>('/uploads', async (req) => {
      const limit = Math.min(1000, Number(req.query.limit ?? 50) || 50)
      return {
        uploads: sim.uploads.slice(-limit).map((u) => ({ topic: u.topic, payload: u.payload.toString('utf8'), receivedAt: u.receivedAt, duplicate: u.duplicate })),
      }
    })

    app.post<{ Params: Dev; Body: { name?: string; payload?: unknown; encoding?: 'plain' | 'base64'; ttl?: number } }>(
      '/devices/:p/:d/commands',
      async (req, reply) => {
        const { p, d } = req.params
        const b = req.body ?? {}
        if (badId(p, d) || typeof b.name !== 'string') return reply.code(400).send({ error: 'productId, deviceId and name required' })
        const expiresAt = b.ttl ? Math.floor(Date.now() / 1000) + b.ttl : undefined
        const requestId = await sim.command(p, d, b.name, b.payload ?? '', { encoding: b.encoding, expiresAt })
        return { requestId }
      },
    )

    app.post<{ Params: Dev; Body: { name?: string; payload?: unknown } }>('/devices/:p/:d/rpc', async (req, reply) => {
      const { p, d } = req.params
      if (badId(p, d) || typeof req.body?.name !== 'string') return reply.code(400).send({ error: 'productId, deviceId and name required' })
      try {
        const r = await sim.rpc(p, d, req.body.name, req.body.payload ?? '')
        return { reply: r.payload.toString('utf8') }
      } catch (err) {
        return reply.code(504).send({ error: (err as Error).message })
      }
    })

    app.post<{ Params: { p: string; tag: string }; Body: { name?: string; payload?: unknown } }>('/tags/:p/:tag/commands', async (req, reply) => {
      if (badId(req.params.p, req.params.tag) || typeof req.body?.name !== 'string') return reply.code(400).send({ error: 'name required' })
      return { requestId: await sim.tagCommand(req.params.p, req.params.tag, req.body.name, req.body.payload ?? '') }
    })

    app.put<{ Params: Dev; Body: { tags?: unknown } }>('/devices/:p/:d/tags', async (req, reply) => {
      const tags = req.body?.tags
      if (!Array.isArray(tags) || !tags.every((t) => isId(t as string))) return reply.code(400).send({ error: 'tags: array of ids' })
      await sim.setTags(req.params.p, req.params.d, tags as string[])
      return sim.tagsOf(req.params.p, req.params.d)
    })

    app.get<{ Params: Dev }>('/devices/:p/:d/shadow', async (req) => sim.shadowOf(req.params.p, req.params.d))

    app.put<{ Params: Dev; Body: { desired?: Record<string, unknown>; version?: number } }>('/devices/:p/:d/shadow', async (req, reply) => {
      const b = req.body ?? {}
      if (!b.desired || typeof b.version !== 'number') return reply.code(400).send({ error: '{desired, version} required' })
      const ok = await sim.setDesired(req.params.p, req.params.d, b.desired, b.version)
      // PROTOCOL.md: a version not greater than the shadow's is refused with 409 and nothing is sent.
      if (!ok) return reply.code(409).send({ error: 'version out of date', shadow: sim.shadowOf(req.params.p, req.params.d) })
      return sim.shadowOf(req.params.p, req.params.d)
    })
    return app
  }

  async stop(): Promise<void> {
    await this.app?.close()
    await this.sim?.stop()
    await new Promise<void>((r) => (this.aedes ? this.aedes.close(() => r()) : r()))
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()))
  }
}
