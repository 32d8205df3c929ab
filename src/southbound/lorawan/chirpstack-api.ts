// ChirpStack's gRPC API, for downlinks when configured (`lorawan.chirpstack.api`):
// `DeviceService.Enqueue` with the package's own client and messages; the server generates the
// queue item id it returns, which its `txack`/`ack`/`log` events then name. Metadata
// `authorization: Bearer <API token>` (ChirpStack docs, "gRPC API").
import { credentials, Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js'
import { DeviceServiceClient } from '@chirpstack/chirpstack-api/api/device_grpc_pb.js'
import devicePb from '@chirpstack/chirpstack-api/api/device_pb.js'
import timestampPb from 'google-protobuf/google/protobuf/timestamp_pb.js'

const CALL_DEADLINE_MS = 10_000

export class EnqueueError extends Error {
  constructor(
    message: string,
    /** Worth trying again later (ChirpStack unreachable, overloaded), as opposed to refused. */
    readonly transient: boolean,
  ) {
    super(message)
  }
}

export class ChirpstackApi {
  private readonly client: DeviceServiceClient
  private readonly metadata = new Metadata()

  constructor(opts: { url: string; token: string; tls: boolean }) {
    this.client = new DeviceServiceClient(opts.url, opts.tls ? credentials.createSsl() : credentials.createInsecure())
    this.metadata.set('authorization', `Bearer ${opts.token}`)
  }

  /** Queue a downlink; resolves with ChirpStack's queue item id. */
  enqueue(d: { devEui: string; confirmed: boolean; fPort: number; data: Buffer; expiresAt?: number }): Promise<string> {
    const item = new devicePb.DeviceQueueItem()
    item.setDevEui(d.devEui)
    item.setConfirmed(d.confirmed)
    item.setFPort(d.fPort)
    item.setData(new Uint8Array(d.data))
    if (d.expiresAt !== undefined) item.setExpiresAt(timestampPb.Timestamp.fromDate(new Date(d.expiresAt)))
    const req = new devicePb.EnqueueDeviceQueueItemRequest()
    req.setQueueItem(item)
    return new Promise((resolve, reject) => {
      this.client.enqueue(req, this.metadata, { deadline: Date.now() + CALL_DEADLINE_MS }, (err: ServiceError | null, res) => {
        if (err) {
          const transient = err.code === GrpcStatus.UNAVAILABLE || err.code === GrpcStatus.DEADLINE_EXCEEDED || err.code === GrpcStatus.RESOURCE_EXHAUSTED
          return reject(new EnqueueError(`ChirpStack refused the downlink: ${err.details || err.message}`, transient))
        }
        if (!res) return reject(new EnqueueError('ChirpStack answered Enqueue without a queue item id', true))
        resolve(res.getId())
      })
    })
  }

  close(): void {
    this.client.close()
  }
}
