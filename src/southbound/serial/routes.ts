// Diagnostics for the technician commissioning a bus, mounted by the gateway under
// /api/adapters/serial/ behind the API token: each port's state and counters, its recent traffic in
// hex, and a one-off Modbus read of any unit/table/address (to find a new meter's registers).
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import { answerBits, answerWords, MAX_READ, readRequest } from './modbus-frame.js'
import type { TrafficFrame } from './port-link.js'
import type { SerialAdapter, PortRuntime } from './serial-adapter.js'

/** The bytes as text for a technician, with what is not printable ASCII shown as `.`. */
function printable(hex: string): string {
  return Buffer.from(hex, 'hex').toString('latin1').replace(/[^\x20-\x7e]/g, '.')
}

const ReadBody = Type.Object(
  {
    port: Type.String({ minLength: 1, description: 'a configured modbus-rtu port\'s name' }),
    unitId: Type.Integer({ minimum: 1, maximum: 247, description: 'an integer from 1 to 247' }),
    table: Type.Union([Type.Literal('holding'), Type.Literal('input'), Type.Literal('coil'), Type.Literal('discrete')], { description: 'one of holding, input, coil, discrete' }),
    address: Type.Integer({ minimum: 0, maximum: 65535, description: 'the 0-based wire address, 0 to 65535' }),
    count: Type.Integer({ minimum: 1, maximum: 2000, default: 1, description: 'how many registers or bits, 1 to 125 (registers) or 2000 (bits)' }),
  },
  { additionalProperties: false },
)

function portView(rt: PortRuntime): Record<string, unknown> {
  const { cfg, link } = rt
  return {
    name: cfg.name,
    path: cfg.path,
    protocol: cfg.protocol,
    baudRate: cfg.baudRate,
    state: link.state,
    open: link.isOpen,
    lastError: link.lastError,
    counters: { ...link.counters },
    devices:
      cfg.protocol === 'modbus-rtu'
        ? rt.modbus.map((d) => ({
            productId: d.ref.productId,
            deviceId: d.ref.deviceId,
            unitId: d.cfg.unitId,
            reachable: d.reachable,
            lastPollAt: d.lastPollAt,
            lastError: d.lastError,
            lastValues: d.lastValues,
            counters: { ...d.counters },
          }))
        : [...rt.lines!.devices.values()].map((d) => ({ productId: d.productId, deviceId: d.deviceId, reachable: link.isOpen })),
    ...(rt.lines ? { lines: { accepted: rt.lines.lines, rejected: { ...rt.lines.rejected }, lastRejected: rt.lines.lastRejected } } : {}),
  }
}

export function serialRoutes(adapter: SerialAdapter): FastifyPluginAsync {
  return async (app) => {
    app.get('/ports', async () => ({ ports: adapter.ports.map(portView) }))

    // Live streams end when the web server closes, or it would wait for them.
    const streams = new Set<() => void>()
    app.addHook('preClose', (done) => {
      for (const end of streams) end()
      done()
    })

    app.get<{ Params: { name: string } }>('/ports/:name/monitor', async (req, reply) => {
      const rt = adapter.port(req.params.name)
      if (!rt) return reply.code(404).send({ error: 'not_found', message: `no serial port named ${req.params.name}` })
      if (!(req.headers.accept ?? '').includes('text/event-stream')) return { port: rt.cfg.name, frames: rt.link.recent }
      // Server-sent events: the recent frames, then each new one as it passes.
      reply.hijack()
      const res = reply.raw
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
      const send = (f: TrafficFrame): void => {
        res.write(`data: ${JSON.stringify({ port: rt.cfg.name, ...f, text: printable(f.hex) })}\n\n`)
      }
      rt.link.recent.forEach(send)
      const link = rt.link
      const end = (): void => {
        link.off('traffic', send)
        streams.delete(end)
        res.end()
      }
      link.on('traffic', send)
      streams.add(end)
      req.raw.on('close', end)
    })

    app.post<{ Body: Static<typeof ReadBody> }>('/modbus/read', { schema: { body: ReadBody } }, async (req, reply) => {
      const b = req.body
      const rt = adapter.port(b.port)
      if (!rt?.master) return reply.code(404).send({ error: 'not_found', message: `no modbus-rtu port named ${b.port}` })
      if (b.count > MAX_READ[b.table]) return reply.code(400).send({ error: 'bad_request', message: `count must be at most ${MAX_READ[b.table]} for ${b.table}` })
      const outcome = await rt.master.transact(readRequest(b.unitId, b.table, b.address, b.count))
      if (outcome.kind === 'ok') {
        const bits = b.table === 'coil' || b.table === 'discrete'
        return { ok: true, values: bits ? answerBits(outcome.frame, b.count) : answerWords(outcome.frame), frame: outcome.frame.toString('hex') }
      }
      if (outcome.kind === 'exception') return { ok: false, exception: { code: outcome.code, message: outcome.message } }
      return reply.code(504).send({ error: 'no_answer', message: outcome.kind === 'port_closed' ? `port ${b.port} is not open` : `no valid answer from unit ${b.unitId} (${outcome.reason})` })
    })
  }
}
