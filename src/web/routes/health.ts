// GET /api/health: no token (load balancers, container health checks); 503 while degraded.
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { WebDeps } from '../deps.js'

const NullableNumber = Type.Union([Type.Number(), Type.Null()])

/** A salvage of a damaged gateway.db (src/store/salvage.ts), as /api/health and /api/store/salvage show it. */
export const SalvageBody = Type.Object({
  at: Type.String(),
  reason: Type.String(),
  movedTo: Type.String(),
  headerRebuilt: Type.Boolean(),
  tables: Type.Array(Type.Object({ table: Type.String(), rows: Type.Integer(), readErrors: Type.Integer() })),
})

// The response schema is the published shape: whatever else a report carries stays inside.
const HealthBody = Type.Object({
  status: Type.Union([Type.Literal('ok'), Type.Literal('degraded')]),
  reasons: Type.Array(Type.String()),
  northbound: Type.Object({
    configured: Type.Boolean(),
    connected: Type.Boolean(),
    since: NullableNumber,
    downSince: NullableNumber,
    links: Type.Integer(),
    linksConnected: Type.Integer(),
    lastError: Type.Union([Type.Object({ at: Type.Number(), code: Type.String(), reason: Type.Union([Type.String(), Type.Null()]), message: Type.String() }), Type.Null()]),
    nextRetryAt: NullableNumber,
  }),
  outbox: Type.Object({
    messages: Type.Integer(),
    bytes: Type.Integer(),
    oldestAgeMs: Type.Number(),
    maxBytes: Type.Integer(),
    drainRate: Type.Object({ last10s: Type.Number(), last60s: Type.Number() }),
  }),
  clock: Type.Object({ offsetMs: Type.Number(), measuredAt: NullableNumber }),
  adapters: Type.Array(
    Type.Object({
      name: Type.String(),
      kind: Type.String(),
      state: Type.String(),
      error: Type.Optional(Type.String()),
    }),
  ),
  history: Type.Optional(
    Type.Object({
      enabled: Type.Boolean(),
      state: Type.String(),
      quarantined: Type.Optional(Type.Object({ file: Type.String(), error: Type.String() })),
      bytes: Type.Integer(),
      series: Type.Integer(),
      shed: Type.Integer(),
      seriesRejected: Type.Integer(),
    }),
  ),
  store: Type.Optional(Type.Object({ salvage: Type.Optional(SalvageBody), brokerSalvage: Type.Optional(SalvageBody) })),
})

export const healthRoutes: FastifyPluginAsync<Pick<WebDeps, 'health'>> = async (app, deps) => {
  app.get('/api/health', { schema: { response: { 200: HealthBody, 503: HealthBody } } }, async (_req, reply) => {
    const report = deps.health()
    return reply.code(report.status === 'ok' ? 200 : 503).send(report)
  })
}
