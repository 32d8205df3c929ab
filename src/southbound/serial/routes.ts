// Diagnostics for the technician commissioning a bus, mounted by the gateway under
// /api/adapters/serial/ behind the API's credentials: each port's state and counters, a live
// monitor of what crosses the line (hex and text), and a one-off Modbus read of any
// unit/table/address (to find a new meter's registers). The web app's Serial page reads these;
// docs/operators/serial.md says what each answer means.
import { PassThrough } from 'node:stream'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync, FastifyReply } from 'fastify'
import { answerBits, answerWords, EXCEPTIONS, MAX_READ, READ_FC, readRequest } from './modbus-frame.js'
import { toLine, type MonitorFrame } from './port-monitor.js'
import { lastProblem, portsView } from './port-view.js'
import type { SerialAdapter } from './serial-adapter.js'

/** Live monitors one port serves at once (each costs a JSON encoding per frame). */
export const MAX_WATCHERS = 4
const PING_MS = 15_000

const Name = Type.Object({ name: Type.String({ description: 'a configured port\'s name' }) })

const ReadBody = Type.Object(
  {
    unit: Type.Integer({ minimum: 1, maximum: 247, description: 'the unit id (slave address), an integer from 1 to 247' }),
    table: Type.Union([Type.Literal('holding'), Type.Literal('input'), Type.Literal('coil'), Type.Literal('discrete')], { description: 'one of holding, input, coil, discrete' }),
    address: Type.Integer({ minimum: 0, maximum: 65535, description: 'the 0-based address on the wire, an integer from 0 to 65535' }),
    count: Type.Integer({ minimum: 1, maximum: 2000, default: 1, description: 'how many to read: 1 to 125 registers (holding, input) or 1 to 2000 bits (coil, discrete)' }),
  },
  { additionalProperties: false, description: 'an object with only unit, table, address and count' },
)

const FC_NAMES: Record<string, string> = { holding: 'read holding registers', input: 'read input registers', coil: 'read coils', discrete: 'read discrete inputs' }

function fail(reply: FastifyReply, status: number, error: string, message: string, more: Record<string, unknown> = {}): FastifyReply {
  return reply.code(status).send({ error, message, ...more })
}

export function serialRoutes(adapter: SerialAdapter): FastifyPluginAsync {
  return async (app) => {
    app.get('/ports', async () => portsView(adapter))

    // Live streams end when the web server closes, or it would wait for them.
    const streams = new Set<() => void>()
    app.addHook('preClose', (done) => {
      for (const end of streams) end()
      done()
    })

    app.get<{ Params: Static<typeof Name> }>('/ports/:name/monitor', { schema: { params: Name } }, async (req, reply) => {
      const rt = adapter.port(req.params.name)
      if (!rt) return fail(reply, 404, 'not_found', `no serial port named ${req.params.name}`)
      const monitor = rt.link.monitor
      if (!(req.headers.accept ?? '').includes('text/event-stream')) return { port: rt.cfg.name, lines: monitor.recent().map(toLine) }
      if (monitor.watching >= MAX_WATCHERS) return fail(reply, 429, 'too_many_watchers', `port ${rt.cfg.name} already has ${MAX_WATCHERS} live monitors open; close one (another browser tab?) and try again`)
      // Server-sent events: the frames kept, then each new one as it passes. A browser that does
      // not keep up never holds the port up or grows the gateway's memory: while the stream's
      // buffer is full, frames are dropped and counted, and a `dropped` event says how many.
      const out = new PassThrough()
      let blocked = false
      let missed = 0
      const write = (chunk: string): void => {
        if (!out.write(chunk)) blocked = true
      }
      const send = (f: MonitorFrame): void => {
        if (blocked) {
          missed++
          monitor.dropped++
          return
        }
        write(`event: line\ndata: ${JSON.stringify(toLine(f))}\n\n`)
      }
      out.on('drain', () => {
        blocked = false
        if (missed > 0) write(`event: dropped\ndata: ${JSON.stringify({ count: missed })}\n\n`)
        missed = 0
      })
      for (const f of monitor.recent()) send(f)
      const unwatch = monitor.watch(send)
      const ping = setInterval(() => {
        if (!blocked) write(': ping\n\n')
      }, PING_MS)
      let ended = false
      const end = (): void => {
        if (ended) return
        ended = true
        unwatch()
        clearInterval(ping)
        streams.delete(end)
        out.end()
      }
      streams.add(end)
      req.raw.on('close', end)
      out.on('close', end)
      return reply.header('content-type', 'text/event-stream').header('cache-control', 'no-cache').header('x-accel-buffering', 'no').send(out)
    })

    // One read at a time per port from here: a page that hammers the button cannot crowd out the polls.
    const reading = new Set<string>()

    app.post<{ Params: Static<typeof Name>; Body: Static<typeof ReadBody> }>('/ports/:name/modbus/read', { schema: { params: Name, body: ReadBody } }, async (req, reply) => {
      const rt = adapter.port(req.params.name)
      if (!rt) return fail(reply, 404, 'not_found', `no serial port named ${req.params.name}`)
      if (!rt.master) return fail(reply, 409, 'not_modbus', `port ${rt.cfg.name} is a line-protocol port (format ${rt.cfg.format}); Modbus reads need a port with protocol: modbus-rtu`)
      const { unit, table, address, count } = req.body
      const fc = READ_FC[table]
      if (count > MAX_READ[table]) return fail(reply, 400, 'bad_request', `count must be at most ${MAX_READ[table]} for table ${table} (function ${fc}, ${FC_NAMES[table]})`)
      if (address + count > 65536) return fail(reply, 400, 'bad_request', `address + count must be at most 65536 (the last address is 65535); got ${address} + ${count}`)
      const notOpen = (): FastifyReply => {
        const p = lastProblem(rt)
        return fail(reply, 503, 'port_not_open', `port ${rt.cfg.name} (${rt.cfg.path}) is not open (${rt.link.state}${p ? `: ${p.message}; ${p.hint}` : ''})`)
      }
      if (!rt.link.isOpen) return notOpen()
      if (reading.has(rt.cfg.name)) return fail(reply, 429, 'busy', `a read on port ${rt.cfg.name} is still waiting for its turn on the bus; try again when it answered`)
      reading.add(rt.cfg.name)
      const started = Date.now()
      try {
        // The port's own queue: it waits for the poll on the line, and the polls wait for it.
        const outcome = await rt.master.transact(readRequest(unit, table, address, count), { commissioning: true })
        const elapsedMs = Date.now() - started
        if (outcome.kind === 'ok') {
          const values = table === 'coil' || table === 'discrete' ? answerBits(outcome.frame, count) : answerWords(outcome.frame)
          return { values, unit, table, address, count, functionCode: fc, answer: outcome.frame.toString('hex'), elapsedMs }
        }
        if (outcome.kind === 'exception') {
          return fail(reply, 502, 'modbus_exception', `unit ${unit} answered exception ${outcome.code} (${outcome.message}) to function ${fc} (${FC_NAMES[table]}) at address ${address}, count ${count}: check the table and address against the device's register map`, {
            exception: { code: outcome.code, name: EXCEPTIONS[outcome.code] ?? `exception ${outcome.code}` },
          })
        }
        if (outcome.kind === 'port_closed') return notOpen()
        const tries = rt.cfg.retries + 1
        if (outcome.reason === 'timeout') {
          return fail(reply, 504, 'timeout', `unit ${unit} did not answer within ${rt.cfg.timeoutMs} ms (${tries} ${tries === 1 ? 'try' : 'tries'}): check the unit id, that the device is powered, the wiring (A/B swapped?), and ${rt.cfg.baudRate} ${rt.cfg.parity} parity ${rt.cfg.stopBits} stop bits against the device`)
        }
        return fail(reply, 502, 'bad_answer', `no valid answer from unit ${unit} in ${tries} ${tries === 1 ? 'try' : 'tries'} (${outcome.reason === 'crc' ? 'corrupt frames: bad CRC' : 'answers that did not fit the request'}): check baudRate and parity against the device, the termination, and that no second master is on the bus`)
      } finally {
        reading.delete(rt.cfg.name)
      }
    })
  }
}
