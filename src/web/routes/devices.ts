// The device registry for the technician: list, add, show, enable/disable, new secret or tags, remove, shadow.
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { WebDeps } from '../deps.js'
import type { DeviceRef } from '../../core/types.js'
import { DeviceParams, NOT_FOUND, refOf } from './device-params.js'

// ProductId/DeviceId levels (PROTOCOL.md "Identities"; the same rule as core/hub-topics.ts).
const Id = Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: '1-64 of [A-Za-z0-9_-]' })
const Secret = Type.String({ minLength: 1, description: 'a non-empty string' })
const Enabled = Type.Boolean({ description: 'a boolean' })
// A tag is a topic level (`tags/{ProductId}/{Tag}/cmd/...`): the same rule as the ids.
const Tags = Type.Array(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'a tag: 1-64 of [A-Za-z0-9_-]' }), { description: 'an array of tags' })
const NullableString = Type.Union([Type.String(), Type.Null()])
const NullableNumber = Type.Union([Type.Number(), Type.Null()])

const NewDeviceBody = Type.Object(
  {
    productId: Id,
    deviceId: Id,
    secret: Type.Optional(Secret),
    tags: Type.Optional(Tags),
    enabled: Type.Optional(Enabled),
  },
  { description: 'a JSON object' },
)

const DeviceChangeBody = Type.Object(
  { enabled: Type.Optional(Enabled), secret: Type.Optional(Secret), tags: Type.Optional(Tags) },
  { description: 'a JSON object' },
)

// Response schemas list what leaves the gateway: a field added to the registry's rows stays inside
// until it is added here.
const DeviceView = Type.Object({
  productId: Type.String(),
  deviceId: Type.String(),
  tags: Type.Array(Type.String()),
  tagsVersion: Type.Integer(),
  enabled: Type.Boolean(),
  hasSecret: Type.Boolean(),
  createdAt: Type.Number(),
  updatedAt: Type.Number(),
})

const Presence = {
  online: Type.Boolean(),
  lastSeen: NullableNumber,
}
// What the device table shows besides the registry (src/live/device-activity.ts says where each comes from).
const Activity = {
  protocol: NullableString,
  rssi: NullableNumber,
  snr: NullableNumber,
  battery: NullableNumber,
  firmwareVersion: NullableString,
  errors: Type.Integer(),
  lastError: Type.Union([Type.Object({ time: Type.Number(), msg: Type.String(), code: NullableString }), Type.Null()]),
  queuedCommands: Type.Integer(),
}
const ListedDevice = Type.Object({ ...DeviceView.properties, ...Presence, ...Activity })

const MessagesQuery = Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 20, description: 'an integer 1-20' })) })
const MessageView = Type.Object({
  messageId: Type.String(),
  kind: Type.String(),
  dataType: NullableString,
  ts: Type.Number(),
  payload: Type.Unknown(),
})

const ConnectionView = Type.Object({
  clientId: Type.String(),
  productId: NullableString,
  deviceId: NullableString,
  transport: Type.String(),
  connected: Type.Boolean(),
  ipaddress: NullableString,
  keepalive: NullableNumber,
  protoVer: NullableNumber,
  connectedAt: NullableNumber,
  disconnectAt: NullableNumber,
})

export const deviceRoutes: FastifyPluginAsync<Pick<WebDeps, 'devices'>> = async (app, { devices }) => {
  const presence = (ref: DeviceRef): { online: boolean; lastSeen: number | null } => ({ online: devices.online(ref), lastSeen: devices.lastSeen(ref) })

  const NO_ACTIVITY = { protocol: null, rssi: null, snr: null, battery: null, firmwareVersion: null, errors: 0, lastError: null }

  app.get('/devices', { schema: { response: { 200: Type.Object({ devices: Type.Array(ListedDevice) }) } } }, async () => {
    const waiting = devices.waitingCommands?.() ?? new Map<string, number>()
    return {
      devices: devices.list().map((d) => ({
        ...d,
        ...presence(d),
        ...(devices.activity?.(d) ?? NO_ACTIVITY),
        queuedCommands: waiting.get(`${d.productId}/${d.deviceId}`) ?? 0,
      })),
    }
  })

  app.get<{ Params: DeviceParams; Querystring: Static<typeof MessagesQuery> }>(
    '/devices/:p/:d/messages',
    { schema: { params: DeviceParams, querystring: MessagesQuery, response: { 200: Type.Object({ messages: Type.Array(MessageView) }) } } },
    async (req, reply) => {
      const ref = refOf(req.params)
      if (!devices.get(ref)) return reply.code(404).send(NOT_FOUND)
      return { messages: devices.messages?.(ref, req.query.limit) ?? [] }
    },
  )

  app.post<{ Body: Static<typeof NewDeviceBody> }>(
    '/devices',
    { schema: { body: NewDeviceBody, response: { 201: Type.Object({ device: DeviceView, secret: Type.Optional(Type.String()) }) } } },
    async (req, reply) => {
      const { productId, deviceId, secret, tags, enabled } = req.body
      try {
        const added = await devices.add({ productId, deviceId, secret, tags, enabled: enabled !== false })
        // The secret is returned this once: the registry keeps only its hash.
        return reply.code(201).send({ device: added.device, secret: added.secret })
      } catch (err) {
        if ((err as { code?: string }).code === 'EXISTS') return reply.code(409).send({ error: 'exists', message: (err as Error).message })
        throw err
      }
    },
  )

  app.get<{ Params: DeviceParams }>(
    '/devices/:p/:d',
    { schema: { params: DeviceParams, response: { 200: Type.Object({ device: DeviceView, ...Presence, connections: Type.Array(ConnectionView) }) } } },
    async (req, reply) => {
      const ref = refOf(req.params)
      const device = devices.get(ref)
      if (!device) return reply.code(404).send(NOT_FOUND)
      return { device, ...presence(ref), connections: devices.connections(ref) }
    },
  )

  // Disabling disconnects the device at once (the registry's 'disabled' event); a new secret
  // takes effect at its next connect; new tags go to a connected native device at once ($set_tags).
  app.patch<{ Params: DeviceParams; Body: Static<typeof DeviceChangeBody> }>(
    '/devices/:p/:d',
    { schema: { params: DeviceParams, body: DeviceChangeBody, response: { 200: Type.Object({ device: DeviceView }) } } },
    async (req, reply) => {
      const ref = refOf(req.params)
      const { enabled, secret, tags } = req.body
      if (enabled === undefined && secret === undefined && tags === undefined) {
        return reply.code(400).send({ error: 'bad_request', message: 'send at least one of {"enabled": true|false}, {"secret": "..."}, {"tags": [...]}' })
      }
      if (!devices.get(ref)) return reply.code(404).send(NOT_FOUND)
      if (secret !== undefined) await devices.setSecret(ref, secret)
      if (tags !== undefined) await devices.setTags(ref, tags)
      if (enabled !== undefined) devices.setEnabled(ref, enabled)
      return { device: devices.get(ref) }
    },
  )

  app.delete<{ Params: DeviceParams }>('/devices/:p/:d', { schema: { params: DeviceParams } }, async (req, reply) => {
    if (!devices.remove(refOf(req.params))) return reply.code(404).send(NOT_FOUND)
    return reply.code(204).send()
  })

  app.get<{ Params: DeviceParams }>('/devices/:p/:d/shadow', { schema: { params: DeviceParams } }, async (req, reply) => {
    const ref = refOf(req.params)
    if (!devices.get(ref)) return reply.code(404).send(NOT_FOUND)
    return { shadow: devices.shadow(ref) }
  })
}
