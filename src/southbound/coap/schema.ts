// The CoAP endpoint's configuration (`coap:` in the config file; issue 10's contract). Absent or
// `enabled: false`: no CoAP endpoint.
import { Type, type Static } from '@sinclair/typebox'

export const CoapSchema = Type.Object(
  {
    enabled: Type.Boolean({ default: true, description: 'false turns the CoAP endpoint off' }),
    host: Type.String({ default: '0.0.0.0', description: 'address to bind (UDP)' }),
    port: Type.Integer({ default: 5683, minimum: 0, maximum: 65535, description: 'UDP port (0 = any free port)' }),
    keepalive: Type.Integer({ default: 120, minimum: 1, maximum: 86_400, description: 'seconds; a CoAP client counts as online until 1.5 x keepalive passes without a request' }),
    maxPayloadBytes: Type.Integer({ default: 1_048_576, minimum: 1, maximum: 16_777_216, description: 'largest payload a device may publish (4.13 beyond)' }),
    rateLimit: Type.Object(
      {
        perSourcePerSecond: Type.Integer({ default: 200, minimum: 1, description: 'datagrams per second taken from one source address; the rest are dropped and counted' }),
      },
      { additionalProperties: false, default: {}, description: 'per-source flood protection' },
    ),
  },
  { additionalProperties: false, description: 'CoAP endpoint for constrained devices (the CoAP convention of the hub, /mqtt/{topic}?c=&u=&p=: docs/integrators/coap-devices.md)' },
)
export type CoapConfig = Static<typeof CoapSchema>
