// The local history (docs/operators/history.md): which series exist, a range of one downsampled to
// at most N points (min/max per bucket, so spikes survive), a device's events, and CSV export.
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync, FastifyReply } from 'fastify'
import type { WebDeps } from '../deps.js'
import { DeviceParams, refOf } from './device-params.js'

const DAY_MS = 86_400_000
const MAX_POINTS = 10_000

const Time = Type.String({ description: 'a time: milliseconds since the epoch, or an ISO 8601 date/time' })
const Range = {
  from: Type.Optional(Time),
  to: Type.Optional(Time),
}
const SeriesListQuery = Type.Object({ device: Type.Optional(Type.String({ description: 'a device as {ProductId}/{DeviceId}' })) })
const RangeQuery = Type.Object({
  series: Type.Optional(Type.Integer({ minimum: 1, description: 'a series id from GET /api/history/series' })),
  device: Type.Optional(Type.String({ description: 'a device as {ProductId}/{DeviceId} (with name, instead of series)' })),
  name: Type.Optional(Type.String({ description: 'a series name such as telemetry.temp (with device)' })),
  ...Range,
  points: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_POINTS, description: `a whole number of points from 1 to ${MAX_POINTS}` })),
})
const ExportQuery = Type.Object({
  device: Type.String({ description: 'a device as {ProductId}/{DeviceId}' }),
  name: Type.Optional(Type.String({ description: 'one series name; all of the device when absent' })),
  ...Range,
})
const EventsQuery = Type.Object({ ...Range, limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, description: 'a whole number from 1 to 10000' })) })

const OFF = { error: 'history_off', message: 'the local history is off (store.history.enabled: false)' }

/** `from`/`to` as epoch ms: a number, or an ISO date; an unreadable one is a 400. */
function range(q: { from?: string; to?: string }, reply: FastifyReply, defaultSpan = DAY_MS): { from: number; to: number } | undefined {
  const parse = (v: string | undefined): number | undefined => (v === undefined ? undefined : /^\d+$/.test(v) ? Number(v) : Date.parse(v))
  const to = parse(q.to) ?? Date.now()
  const from = parse(q.from) ?? to - defaultSpan
  if (!Number.isFinite(from) || !Number.isFinite(to)) {
    void reply.code(400).send({ error: 'bad_request', message: 'from and to must be milliseconds since the epoch or ISO 8601 dates' })
    return undefined
  }
  if (to <= from) {
    void reply.code(400).send({ error: 'bad_request', message: 'to must be after from' })
    return undefined
  }
  return { from, to }
}

export const historyRoutes: FastifyPluginAsync<Pick<WebDeps, 'history' | 'devices'>> = async (app, deps) => {
  app.get<{ Querystring: Static<typeof SeriesListQuery> }>('/history/series', { schema: { querystring: SeriesListQuery } }, async (req, reply) => {
    if (!deps.history) return reply.code(404).send(OFF)
    return deps.history.series(req.query.device)
  })

  app.get<{ Querystring: Static<typeof RangeQuery> }>('/history', { schema: { querystring: RangeQuery } }, async (req, reply) => {
    const h = deps.history
    if (!h) return reply.code(404).send(OFF)
    const q = req.query
    const series = q.series !== undefined ? h.find(q.series) : q.device !== undefined && q.name !== undefined ? h.findByName(q.device, q.name) : undefined
    if (q.series === undefined && (q.device === undefined || q.name === undefined)) {
      return reply.code(400).send({ error: 'bad_request', message: 'give series (an id from GET /api/history/series), or device and name' })
    }
    if (!series) return reply.code(404).send({ error: 'not_found', message: 'no such series' })
    const r = range(q, reply)
    if (!r) return reply
    return h.query(series, r.from, r.to, q.points ?? 500)
  })

  app.get<{ Querystring: Static<typeof ExportQuery> }>('/history/export', { schema: { querystring: ExportQuery } }, async (req, reply) => {
    const h = deps.history
    if (!h) return reply.code(404).send(OFF)
    const r = range(req.query, reply)
    if (!r) return reply
    const body = [...h.csv({ device: req.query.device, name: req.query.name, ...r })].join('\n') + '\n'
    const file = `history-${req.query.device.replace(/[^A-Za-z0-9_-]/g, '_')}.csv`
    return reply.type('text/csv; charset=utf-8').header('content-disposition', `attachment; filename="${file}"`).send(body)
  })

  app.get<{ Params: DeviceParams; Querystring: Static<typeof EventsQuery> }>(
    '/devices/:p/:d/events',
    { schema: { params: DeviceParams, querystring: EventsQuery } },
    async (req, reply) => {
      const h = deps.history
      if (!h) return reply.code(404).send(OFF)
      const r = range(req.query, reply, 7 * DAY_MS)
      if (!r) return reply
      return { events: h.events(refOf(req.params), r.from, r.to, req.query.limit ?? 1000) }
    },
  )
}
