// The `ota:` section (composed into the root schema by src/config.ts).
import { Type, type Static } from '@sinclair/typebox'

export const OtaSchema = Type.Object(
  {
    relay: Type.Boolean({
      default: true,
      description: "handle the hub's `$ota_upgrade` for native children: fetch the image once, verify it, serve it on site and rewrite `url`; false = relay the command untouched",
    }),
    advertiseHost: Type.Optional(
      Type.String({ minLength: 1, description: 'the address devices reach the gateway at, put into rewritten URLs; default: the first non-loopback IPv4 address of the machine' }),
    ),
    httpUrl: Type.Optional(Type.String({ pattern: '^https?://', description: 'base of the HTTP URLs given to devices (default http://{advertiseHost}:{http.port}); images are under /ota/' })),
    coapUrl: Type.Optional(Type.String({ pattern: '^coaps?://', description: 'base of the CoAP URLs given to CoAP devices (default coap://{advertiseHost}:{coap port})' })),
    maxImageBytes: Type.Integer({ default: 256 * 1024 * 1024, minimum: 1, description: 'largest image the gateway fetches or accepts; a larger `size` is answered -4' }),
    cacheMaxBytes: Type.Integer({
      default: 1024 * 1024 * 1024,
      minimum: 1,
      description: 'quota of the image cache ({dataDir}/ota/); the oldest image no pending job uses is evicted to make room; a download that still does not fit is refused (-4)',
    }),
    bandwidthBytesPerSecond: Type.Integer({ default: 0, minimum: 0, description: "the gateway's own image downloads share at most this many bytes per second (so the outbox drain keeps its share of a slow uplink); 0 = unlimited" }),
    maxConcurrentDevices: Type.Integer({
      default: 0,
      minimum: 0,
      description: 'how many devices may have an image on its way at once (command released, not yet reported 100 %, done or failed); the rest wait in order: a staged rollout; 0 = no limit',
    }),
    maxConcurrentPerJob: Type.Integer({
      default: 0,
      minimum: 0,
      description:
        'how many devices of one job (one $ota_upgrade RequestId: a hub tag campaign, or an offline campaign) may have an image on its way at once; the rest of the job waits in order; POST /api/ota/jobs `maxConcurrent` sets it per offline job; 0 = no limit',
    }),
    download: Type.Object(
      {
        idleTimeoutSeconds: Type.Integer({ default: 30, minimum: 1, description: 'a download that receives nothing this long is cut and resumed' }),
        attempts: Type.Integer({ default: 8, minimum: 1, description: 'tries per image (each resumes where the last stopped) before the jobs are answered -1' }),
        retryBaseSeconds: Type.Number({ default: 2, minimum: 0, description: 'first retry delay; doubles each attempt (at most 5 minutes), with full jitter' }),
      },
      { additionalProperties: false, default: {}, description: "the gateway's own image downloads (TLS verified with northbound.tls.ca and rejectUnauthorized)" },
    ),
    jobTtlHours: Type.Number({ default: 168, minimum: 0.001, description: 'how long a job without ExpiresAt keeps its local URLs' }),
  },
  { additionalProperties: false, default: {}, description: 'the OTA relay (docs/operators/ota.md)' },
)

export type OtaConfig = Static<typeof OtaSchema>
