// The HTTP device ingest's configuration (`httpDevices:` in the config file). Its routes live on the
// gateway's HTTP listener (`http.host`/`http.port`), under /devices/; this section turns them on and
// tunes them. Absent: no device may post over HTTP (opening a way in is explicit).
import { Type, type Static } from '@sinclair/typebox'

export const HttpDevicesSchema = Type.Object(
  {
    keepalive: Type.Integer({
      default: 120,
      minimum: 1,
      maximum: 86_400,
      description: 'seconds; a device counts as online while a long-poll is pending or until 1.5 x keepalive after its last request',
    }),
    maxWaitSeconds: Type.Integer({ default: 60, minimum: 0, maximum: 3_600, description: 'longest `wait` a command long-poll may ask for; larger values are cut to this' }),
    maxBodyBytes: Type.Integer({ default: 1_048_576, minimum: 1, maximum: 16_777_216, description: 'largest request body a device may post (413 beyond)' }),
    idempotencyTtlSeconds: Type.Integer({
      default: 86_400,
      minimum: 1,
      description: 'how long an Idempotency-Key / X-Message-Id is remembered per device: a repeat within it is answered 200 and not stored again',
    }),
  },
  { additionalProperties: false, description: 'HTTP device ingest on the http listener (POST /devices/{ProductId}/{DeviceId}/...); absent = off' },
)
export type HttpDevicesConfig = Static<typeof HttpDevicesSchema>
