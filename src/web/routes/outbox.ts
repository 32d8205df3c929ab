// GET /api/outbox: what waits for the hub, per priority, and what the quota dropped.
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { WebDeps } from '../deps.js'

const Size = Type.Object({ messages: Type.Integer(), bytes: Type.Integer() })
const OutboxBody = Type.Object({
  messages: Type.Integer(),
  bytes: Type.Integer(),
  oldestAgeMs: Type.Number(),
  byPriority: Type.Record(Type.String(), Size),
  dropped: Type.Record(Type.String(), Type.Integer()),
  maxBytes: Type.Integer(),
})

export const outboxRoutes: FastifyPluginAsync<Pick<WebDeps, 'outboxStats'>> = async (app, deps) => {
  app.get('/outbox', { schema: { response: { 200: OutboxBody } } }, async () => deps.outboxStats())
}
