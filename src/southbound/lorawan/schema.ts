// The LoRaWAN adapter's configuration (`lorawan:` in the config file), composed into the one root
// schema through the adapter registry. Issue 8 fixes the shape; ChirpStack's side of each key is in
// docs/operators/lorawan.md.
import { Type, type Static } from '@sinclair/typebox'

const Tls = Type.Object(
  {
    ca: Type.Optional(Type.String({ description: 'PEM CA file to verify the broker with' })),
    cert: Type.Optional(Type.String({ description: 'PEM client certificate file' })),
    key: Type.Optional(Type.String({ description: 'PEM client private key file' })),
    rejectUnauthorized: Type.Boolean({ default: true, description: 'refuse a broker certificate that does not verify' }),
  },
  { additionalProperties: false, description: 'TLS towards ChirpStack\'s broker (use an mqtts:// url)' },
)

const Mqtt = Type.Object(
  {
    url: Type.String({ default: 'mqtt://127.0.0.1:1884', description: 'the broker ChirpStack\'s MQTT integration publishes to (mqtt:// or mqtts://)' }),
    username: Type.Optional(Type.String({ description: 'user name at that broker' })),
    password: Type.Optional(Type.String({ description: 'password at that broker' })),
    clientId: Type.String({
      default: 'iothub-edge-lorawan',
      pattern: '^[A-Za-z0-9_.:-]{1,64}$',
      description: 'fixed client id: the broker keeps the persistent session (and what arrives while the gateway is down) under it',
    }),
    protocolVersion: Type.Union([Type.Literal(5), Type.Literal(4)], { default: 5, description: 'MQTT 5 or 3.1.1 (4)' }),
    sessionExpirySeconds: Type.Integer({
      minimum: 0,
      default: 604800,
      description: 'MQTT 5: how long the broker keeps the session (and queues events) after a disconnect; without it an MQTT 5 session ends at disconnect',
    }),
    keepaliveSeconds: Type.Integer({ minimum: 0, default: 30, description: 'MQTT keepalive' }),
    eventTopic: Type.String({
      default: 'application/+/device/+/event/+',
      description: 'subscription for ChirpStack\'s events; the last level must be the event type, and the levels after `application` and `device` the ids',
    }),
    commandTopic: Type.String({
      default: 'application/{applicationId}/device/{devEui}/command/down',
      description: 'where downlinks are published; {applicationId} and {devEui} are filled in',
    }),
    tls: Type.Optional(Tls),
  },
  { additionalProperties: false, default: {}, description: 'the gateway connects as a client to the broker ChirpStack publishes to (QoS 1, persistent session)' },
)

const Http = Type.Object(
  {
    host: Type.String({ default: '127.0.0.1', description: 'address to bind the HTTP integration endpoint' }),
    port: Type.Integer({ minimum: 0, maximum: 65535, default: 8091, description: 'its TCP port (8090 is the gateway API, 8080 ChirpStack\'s)' }),
    path: Type.String({ default: '/integrations/chirpstack', pattern: '^/', description: 'the path ChirpStack\'s HTTP integration posts to (`?event=...` is added by ChirpStack)' }),
    secretHeader: Type.String({ default: 'x-iothub-edge-secret', pattern: '^[A-Za-z0-9-]+$', description: 'the header carrying the shared secret (a header set in ChirpStack\'s integration)' }),
    secret: Type.String({ minLength: 16, description: 'the shared secret; requests without it are refused (401)' }),
  },
  { additionalProperties: false, description: 'also take events from ChirpStack\'s HTTP integration (beside MQTT, which downlinks need)' },
)

const Api = Type.Object(
  {
    url: Type.String({ default: '127.0.0.1:8080', description: 'ChirpStack\'s gRPC API, host:port' }),
    token: Type.String({ minLength: 1, description: 'an API token made in ChirpStack (API keys)' }),
    tls: Type.Boolean({ default: false, description: 'use TLS (the system\'s CAs) towards the API' }),
    tenantId: Type.Optional(
      Type.String({
        pattern: '^[0-9a-fA-F-]{36}$',
        description: 'the ChirpStack tenant (UUID) whose applications `iothub-edge lorawan import` lists (ApplicationService.List needs it); `--tenant` overrides it',
      }),
    ),
  },
  { additionalProperties: false, description: 'ChirpStack\'s gRPC API: when set, downlinks are queued with DeviceService.Enqueue instead of MQTT, and `iothub-edge lorawan import` can list its devices' },
)

const Chirpstack = Type.Object(
  {
    mqtt: Mqtt,
    http: Type.Optional(Http),
    api: Type.Optional(Api),
    encoding: Type.Union([Type.Literal('json'), Type.Literal('protobuf')], {
      default: 'json',
      description: 'the encoding of ChirpStack\'s MQTT integration (`json = true` in chirpstack.toml is json); downlinks are sent the same way',
    }),
  },
  { additionalProperties: false, default: {}, description: 'where ChirpStack\'s events come from and downlinks go' },
)

const CommandSpec = Type.Object(
  {
    fPort: Type.Integer({ minimum: 1, maximum: 223, description: 'LoRaWAN FPort of the downlink' }),
    confirmed: Type.Boolean({ default: false, description: 'a confirmed downlink: the hub hears `acknowledged` or `not_acknowledged`' }),
  },
  { additionalProperties: false },
)

/** What decodes and encodes one device's payloads; shared by a device profile's devices. */
const deviceSettings = {
  codec: Type.Optional(
    Type.String({
      pattern: '^(cayenne|none|/.+)$',
      description:
        'payload codec when ChirpStack sends no decoded `object`: `cayenne` (Cayenne LPP), `none` (raw bytes), or the absolute path of a JavaScript codec file (decodeUplink/encodeDownlink, as ChirpStack and TTN use)',
    }),
  ),
  dataTypes: Type.Optional(
    Type.Record(Type.String({ pattern: '^[0-9]{1,3}$' }), Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$' }), {
      description: 'upload_data DataType per FPort, e.g. {"1": telemetry}; unlisted ports use `fport_{n}`',
    }),
  ),
  commands: Type.Optional(
    Type.Record(Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$' }), CommandSpec, {
      description: 'downlink FPort and confirmation per command name; the command\'s payload bytes are the downlink',
    }),
  ),
  shadow: Type.Optional(
    Type.Object(
      {
        fPort: Type.Integer({ minimum: 1, maximum: 223, description: 'FPort of the downlink that carries changed desired keys (as JSON)' }),
        confirmed: Type.Boolean({ default: false, description: 'send it as a confirmed downlink' }),
        reportedKeys: Type.Array(Type.String(), { default: [], description: 'decoded uplink fields reported to the shadow as the device\'s own state' }),
      },
      { additionalProperties: false, description: 'desired-state changes from the hub become one downlink' },
    ),
  ),
}

const Device = Type.Object(
  {
    devEui: Type.String({ pattern: '^[0-9A-Fa-f]{16}$', description: 'the device\'s DevEUI (16 hex characters; matched lower-case)' }),
    productId: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'its ProductId at the hub' }),
    deviceId: Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$', description: 'its DeviceId at the hub' }),
    tags: Type.Array(Type.String(), { default: [], description: 'tags the child is created with' }),
    ...deviceSettings,
  },
  { additionalProperties: false, description: 'one LoRaWAN device and the child it becomes' },
)

const AutoRegister = Type.Object(
  {
    productIdFrom: Type.Union([Type.Literal('fixed'), Type.Literal('applicationName'), Type.Literal('deviceProfileName')], {
      default: 'fixed',
      description: 'where an unknown device\'s ProductId comes from (names reduced to [A-Za-z0-9_-]); its DeviceId is the devEui',
    }),
    productId: Type.String({ default: 'lorawan', pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'the ProductId for `fixed`' }),
    tagsFromChirpstack: Type.Boolean({ default: true, description: 'seed the new child\'s tags with ChirpStack\'s device tags as `key_value`' }),
  },
  { additionalProperties: false, description: 'unknown devEuis become children; absent: they are refused (counted and logged once)' },
)

export const LorawanSchema = Type.Object(
  {
    chirpstack: Chirpstack,
    autoRegister: Type.Optional(AutoRegister),
    devices: Type.Array(Device, { default: [], description: 'devEui to ProductId/DeviceId, with per-device codec, data types and commands' }),
    deviceProfiles: Type.Record(Type.String(), Type.Object(deviceSettings, { additionalProperties: false }), {
      default: {},
      description: 'codec, data types, commands and shadow per ChirpStack device profile name; a device\'s own settings take precedence',
    }),
    radioInPayload: Type.Boolean({ default: false, description: 'add `_radio` (rssi, snr, gateways, fCnt, dr, frequency) to each upload_data payload' }),
    statusIntervalSeconds: Type.Integer({
      minimum: 0,
      default: 3600,
      description: 'at most one update_status per device in this interval, unless the battery moved 5 points or more, or external power changed',
    }),
    awayAfterSeconds: Type.Integer({
      minimum: 0,
      default: 0,
      description:
        'a device silent for its usual uplink interval (the median of its last gaps) plus this long is reported disconnected; until two uplinks give its interval, silent this long (0: never)',
    }),
    dedupTtlSeconds: Type.Integer({ minimum: 60, default: 86400, description: 'how long a ChirpStack deduplicationId is remembered (across restarts)' }),
    downlinkTtlSeconds: Type.Integer({
      minimum: 0,
      default: 86400,
      description: 'how long the gateway follows a downlink\'s fate (txack/ack/log) when its command has no ExpiresAt',
    }),
  },
  { additionalProperties: false, description: 'LoRaWAN devices behind ChirpStack v4 (docs/operators/lorawan.md)' },
)

export type LorawanConfig = Static<typeof LorawanSchema>
export type LorawanDeviceConfig = Static<typeof Device>
export type DeviceSettings = Pick<LorawanDeviceConfig, 'codec' | 'dataTypes' | 'commands' | 'shadow'>

/** Rules across keys that a schema cannot say. */
export function checkLorawanConfig(cfg: LorawanConfig): string[] {
  const problems: string[] = []
  const euis = new Map<string, number>()
  const refs = new Set<string>()
  cfg.devices.forEach((d, i) => {
    const eui = d.devEui.toLowerCase()
    if (euis.has(eui)) problems.push(`lorawan.devices[${i}].devEui: ${eui} is listed twice (also lorawan.devices[${euis.get(eui)}])`)
    euis.set(eui, i)
    const ref = `${d.productId}/${d.deviceId}`
    if (refs.has(ref)) problems.push(`lorawan.devices[${i}]: ${ref} is mapped from two devEuis`)
    refs.add(ref)
  })
  const t = cfg.chirpstack.mqtt.eventTopic.split('/')
  if (t[t.length - 1] !== '+' && t[t.length - 1] !== '#') {
    problems.push(`lorawan.chirpstack.mqtt.eventTopic: the last level must be + (the event type), got ${cfg.chirpstack.mqtt.eventTopic}`)
  }
  if (!cfg.chirpstack.mqtt.commandTopic.includes('{devEui}')) {
    problems.push('lorawan.chirpstack.mqtt.commandTopic: must contain {devEui}')
  }
  return problems
}
