// A technician's commands to one device: the history, and sending one. Sent with origin 'local',
// so the device's reply stays on the gateway; `rpc: true` waits for that reply.
import { randomBytes } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { Command } from '../../core/types.js'
import type { StoredCommand } from '../../store/commands.js'
import type { WebDeps } from '../deps.js'
import { DeviceParams, NOT_FOUND, refOf } from './device-params.js'

// How long a local RPC waits for the device's reply by default (the hub's own limit is ~5 s).
const RPC_WAIT_MS = 5_000

const CommandBody = Type.Object(
  {
    // No `$`: internal commands (tags, shadow, OTA) are the core's, never a technician's.
    name: Type.String({
      pattern: '^[A-Za-z0-9_.:-]{1,64}$',
      description: '1-64 of [A-Za-z0-9_.:-]; names starting with $ are internal to the protocol and cannot be sent',
    }),
    // A string is sent as is, anything else as its JSON text.
    payload: Type.Optional(Type.Unknown()),
    encoding: Type.Optional(Type.Union([Type.Literal('plain'), Type.Literal('base64')], { description: 'plain or base64' })),
    ttl: Type.Optional(Type.Integer({ minimum: 1, description: 'a positive whole number of seconds' })),
    rpc: Type.Optional(Type.Boolean({ description: 'a boolean' })),
  },
  { description: 'a JSON object' },
)

const NullableString = Type.Union([Type.String(), Type.Null()])
const CommandView = Type.Object({
  id: Type.Integer(),
  type: Type.String(),
  name: Type.String(),
  requestId: Type.String(),
  encoding: Type.String(),
  expiresAt: Type.Union([Type.Number(), Type.Null()]),
  origin: Type.String(),
  state: Type.String(),
  reason: NullableString,
  createdAt: Type.Number(),
  updatedAt: Type.Number(),
  payload: Type.String(),
  reply: NullableString,
})

const toView = (c: StoredCommand): Static<typeof CommandView> => ({
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
})

export const commandRoutes: FastifyPluginAsync<Pick<WebDeps, 'devices' | 'commands' | 'rpcWaitMs'>> = async (app, deps) => {
  const rpcWaitMs = deps.rpcWaitMs ?? RPC_WAIT_MS

  app.get<{ Params: DeviceParams }>(
    '/devices/:p/:d/commands',
    { schema: { params: DeviceParams, response: { 200: Type.Object({ commands: Type.Array(CommandView) }) } } },
    async (req, reply) => {
      const ref = refOf(req.params)
      if (!deps.devices.get(ref)) return reply.code(404).send(NOT_FOUND)
      return { commands: deps.commands.history(ref).map(toView) }
    },
  )

  app.post<{ Params: DeviceParams; Body: Static<typeof CommandBody> }>(
    '/devices/:p/:d/commands',
    { schema: { params: DeviceParams, body: CommandBody } },
    async (req, reply) => {
      const ref = refOf(req.params)
      if (!deps.devices.get(ref)) return reply.code(404).send(NOT_FOUND)
      const { name, payload, encoding = 'plain', ttl, rpc } = req.body
      const cmd: Command = {
        type: rpc === true ? 'rpc' : 'cmd',
        device: ref,
        name,
        encoding,
        requestId: randomBytes(12).toString('hex'),
        expiresAt: ttl === undefined ? undefined : Math.floor(Date.now() / 1000) + ttl,
        payload: Buffer.from(payload === undefined ? '' : typeof payload === 'string' ? payload : JSON.stringify(payload)),
      }
      // Waiting starts before sending, so no reply can slip in between, however send() delivers.
      const replied = cmd.type === 'rpc' ? deps.commands.waitForReply(ref, cmd.requestId, rpcWaitMs) : undefined
      const outcome = deps.commands.send(cmd)
      if (outcome === 'rpc_offline') {
        return reply.code(409).send({ error: 'offline', message: 'the device is not connected; RPCs are not queued', requestId: cmd.requestId })
      }
      if (!replied) return reply.code(202).send({ requestId: cmd.requestId, state: outcome })
      const answer = await replied
      if (!answer) return reply.code(504).send({ error: 'timeout', message: `no reply within ${rpcWaitMs / 1000} s`, requestId: cmd.requestId })
      return { requestId: cmd.requestId, state: 'replied', reply: answer.toString('utf8') }
    },
  )
}
