// The broker adapter's configuration (`broker:` in the config file), composed into the one root
// schema through the adapter registry.
import { Type, type Static } from '@sinclair/typebox'
import { AppAccountSchema, checkAppAccounts } from './app-accounts.js'

const Tls = Type.Object(
  {
    cert: Type.String({ description: 'PEM certificate file' }),
    key: Type.String({ description: 'PEM private key file' }),
    ca: Type.Optional(Type.String({ description: 'PEM CA file for client certificates' })),
    requestClientCert: Type.Boolean({ default: false, description: 'ask devices for a client certificate' }),
  },
  { additionalProperties: false, description: 'serve MQTT over TLS on this listener' },
)

const Listener = Type.Object(
  {
    host: Type.String({ default: '0.0.0.0', description: 'address to bind' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, description: 'TCP port (0 = any free port)' }),
    zone: Type.Union([Type.Literal('external'), Type.Literal('internal')], {
      default: 'external',
      description: 'external: devices and local app accounts (broker.apps), authentication and ACL enforced; internal: trusted local tools, no auth, may use $SYS',
    }),
    tls: Type.Optional(Tls),
    denyTopics: Type.Optional(
      Type.Array(Type.String({ minLength: 1 }), {
        description:
          'topic filters the clients of this listener may neither subscribe to nor receive (on top of the device ACL): a SUBSCRIBE whose filter, read as a topic, matches one gets SUBACK 0x80; a wider filter (e.g. `#`) is granted but delivers nothing on them',
      }),
    ),
  },
  { additionalProperties: false, description: 'one MQTT listener' },
)

export const BrokerSchema = Type.Object(
  {
    listeners: Type.Array(Listener, {
      default: [
        { host: '0.0.0.0', port: 1883, zone: 'external' },
        { host: '127.0.0.1', port: 11883, zone: 'internal' },
      ],
      description: 'MQTT listeners for devices and local tools',
    }),
    apps: Type.Array(AppAccountSchema, {
      default: [],
      description:
        'local application accounts (SCADA, Home Assistant, Node-RED on the LAN) for the external listeners: user name, scrypt password hash, and the topic filters each may publish and subscribe within (docs/operators/local-apps.md)',
    }),
    aclDenyAction: Type.Union([Type.Literal('ignore'), Type.Literal('disconnect')], {
      default: 'ignore',
      description: 'what happens to a client that publishes where the ACL denies: drop the message, or also disconnect the client',
    }),
    persistence: Type.Union([Type.Literal('sqlite'), Type.Literal('memory')], {
      default: 'sqlite',
      description:
        "where the broker keeps persistent sessions (subscriptions, QoS 1/2 messages queued for a device), retained messages and wills: sqlite ({dataDir}/broker.db, they survive a restart and a kill -9) or memory (lost at every restart)",
    }),
    mqtt5: Type.Boolean({
      default: false,
      description:
        'also speak MQTT 5 (aedes 2.0.0-beta.1 instead of aedes 1.2.0; docs/operators/mqtt5.md): MQTT 5 clients are refused while this is false. A beta: see decision 0021-mqtt5 for what it passes',
    }),
    allowEmptyClientId: Type.Boolean({
      default: true,
      description:
        'accept a CONNECT with an empty client id and CleanSession=1, giving the connection an id of its own (MQTT 3.1.1 [MQTT-3.1.3-6] allows it); false answers every empty client id with CONNACK 0x02 (identifier rejected; MQTT 5: 0x85), as Mosquitto’s allow_zero_length_clientid false. With CleanSession=0 it is always refused [MQTT-3.1.3-8]',
    }),
    maxQueuedMessages: Type.Integer({
      minimum: 1,
      default: 1000,
      description:
        'QoS 1/2 messages the broker keeps for one persistent session (a client with clean session off) while it is away, in flight included; past it the oldest are dropped, counted and logged (as Mosquitto max_queued_messages; with persistence sqlite and memory)',
    }),
    maxQueuedBytes: Type.Integer({
      minimum: 1,
      default: 4 * 1024 * 1024,
      description: 'the same limit in bytes (topics and payloads) for one persistent session; past it the oldest messages are dropped (as Mosquitto max_queued_bytes)',
    }),
  },
  { additionalProperties: false, default: {}, description: 'the local MQTT broker devices connect to' },
)

export type BrokerConfig = Static<typeof BrokerSchema>
export type ListenerConfig = Static<typeof Listener>

/** Rules across keys that a schema cannot say. */
export function checkBrokerConfig(cfg: BrokerConfig): string[] {
  const problems: string[] = []
  const ports = new Set<number>()
  cfg.listeners.forEach((l, i) => {
    if (l.port !== 0 && ports.has(l.port)) problems.push(`broker.listeners[${i}].port: ${l.port} is used twice`)
    ports.add(l.port)
  })
  problems.push(...checkAppAccounts(cfg.apps))
  return problems
}
