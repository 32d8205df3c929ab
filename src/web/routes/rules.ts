// GET /api/rules: each local rule with its counters and last error; GET /api/alarms: the alarms
// the rules keep, raised ones first (docs/operators/rules.md).
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { WebDeps } from '../deps.js'

const RuleBody = Type.Object({
  name: Type.String(),
  from: Type.String(),
  actions: Type.Array(Type.String()),
  matched: Type.Integer(),
  dropped: Type.Integer(),
  emitted: Type.Integer(),
  commands: Type.Integer(),
  republished: Type.Integer(),
  errors: Type.Integer(),
  evalSeconds: Type.Number(),
  lastError: Type.Union([Type.Null(), Type.Object({ message: Type.String(), at: Type.Number(), device: Type.String() })]),
})

const AlarmBody = Type.Object({
  rule: Type.String(),
  alarm: Type.String(),
  productId: Type.String(),
  deviceId: Type.String(),
  state: Type.Union([Type.Literal('raised'), Type.Literal('cleared')]),
  value: Type.Unknown(),
  since: Type.Number(),
  pendingSince: Type.Union([Type.Null(), Type.Number()]),
})

const AlarmsQuery = Type.Object({ state: Type.Optional(Type.Union([Type.Literal('raised'), Type.Literal('cleared')])) }, { additionalProperties: false })

export const rulesRoutes: FastifyPluginAsync<Pick<WebDeps, 'rules'>> = async (app, deps) => {
  app.get('/rules', { schema: { response: { 200: Type.Object({ rules: Type.Array(RuleBody) }) } } }, async () => ({ rules: deps.rules?.list() ?? [] }))
  app.get<{ Querystring: { state?: 'raised' | 'cleared' } }>(
    '/alarms',
    { schema: { querystring: AlarmsQuery, response: { 200: Type.Object({ alarms: Type.Array(AlarmBody) }) } } },
    async (req) => {
      const all = deps.rules?.alarms() ?? []
      return { alarms: req.query.state ? all.filter((a) => a.state === req.query.state) : all }
    },
  )
}
