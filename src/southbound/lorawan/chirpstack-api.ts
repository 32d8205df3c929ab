// ChirpStack's gRPC API (`lorawan.chirpstack.api`), with the package's own clients and messages:
// `DeviceService.Enqueue` for downlinks (the server generates the queue item id it returns, which its
// `txack`/`ack`/`log` events then name), and for `iothub-edge lorawan import`
// `ApplicationService.List` (per tenant), `ApplicationService.Get` and `DeviceService.List` (per
// application). Metadata `authorization: Bearer <API token>` (ChirpStack docs, "gRPC API").
import { credentials, Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js'
import { DeviceServiceClient } from '@chirpstack/chirpstack-api/api/device_grpc_pb.js'
import { ApplicationServiceClient } from '@chirpstack/chirpstack-api/api/application_grpc_pb.js'
import devicePb from '@chirpstack/chirpstack-api/api/device_pb.js'
import applicationPb from '@chirpstack/chirpstack-api/api/application_pb.js'
import timestampPb from 'google-protobuf/google/protobuf/timestamp_pb.js'

const CALL_DEADLINE_MS = 10_000
// ChirpStack's List calls return `limit` items per page ("0 returns only the count").
const PAGE = 100

export class EnqueueError extends Error {
  constructor(
    message: string,
    /** Worth trying again later (ChirpStack unreachable, overloaded), as opposed to refused. */
    readonly transient: boolean,
  ) {
    super(message)
  }
}

/** An application as ChirpStack lists it. */
export interface ChirpstackApplication {
  id: string
  name: string
}

/** A device as ChirpStack lists it (DeviceListItem). */
export interface ChirpstackDevice {
  devEui: string
  name: string
  deviceProfileName: string
  tags: Record<string, string>
}

type Callback<T> = (err: ServiceError | null, res?: T) => void

export class ChirpstackApi {
  private readonly devices: DeviceServiceClient
  private readonly applications: ApplicationServiceClient
  private readonly metadata = new Metadata()

  constructor(opts: { url: string; token: string; tls: boolean }) {
    const creds = opts.tls ? credentials.createSsl() : credentials.createInsecure()
    this.devices = new DeviceServiceClient(opts.url, creds)
    this.applications = new ApplicationServiceClient(opts.url, creds)
    this.metadata.set('authorization', `Bearer ${opts.token}`)
  }

  private get options(): { deadline: number } {
    return { deadline: Date.now() + CALL_DEADLINE_MS }
  }

  /** One unary call as a promise; a refusal carries ChirpStack's own words. */
  private call<T>(what: string, invoke: (cb: Callback<T>) => void): Promise<T> {
    return new Promise((resolve, reject) => {
      invoke((err, res) => {
        if (err) return reject(new Error(`ChirpStack ${what}: ${err.details || err.message}`))
        if (!res) return reject(new Error(`ChirpStack ${what}: empty answer`))
        resolve(res)
      })
    })
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
      this.devices.enqueue(req, this.metadata, this.options, (err: ServiceError | null, res) => {
        if (err) {
          const transient = err.code === GrpcStatus.UNAVAILABLE || err.code === GrpcStatus.DEADLINE_EXCEEDED || err.code === GrpcStatus.RESOURCE_EXHAUSTED
          return reject(new EnqueueError(`ChirpStack refused the downlink: ${err.details || err.message}`, transient))
        }
        if (!res) return reject(new EnqueueError('ChirpStack answered Enqueue without a queue item id', true))
        resolve(res.getId())
      })
    })
  }

  /** Every item of a List call, page by page until ChirpStack's total count. */
  private async all<T>(page: (offset: number) => Promise<{ items: T[]; total: number }>): Promise<T[]> {
    const out: T[] = []
    for (;;) {
      const { items, total } = await page(out.length)
      out.push(...items)
      if (items.length === 0 || out.length >= total) return out
    }
  }

  /** Every application of a tenant (ApplicationService.List needs the tenant id). */
  listApplications(tenantId: string): Promise<ChirpstackApplication[]> {
    return this.all(async (offset) => {
      const req = new applicationPb.ListApplicationsRequest()
      req.setTenantId(tenantId)
      req.setLimit(PAGE)
      req.setOffset(offset)
      const res = await this.call<applicationPb.ListApplicationsResponse>('ApplicationService.List', (cb) => this.applications.list(req, this.metadata, this.options, cb))
      return { items: res.getResultList().map((a) => ({ id: a.getId(), name: a.getName() })), total: res.getTotalCount() }
    })
  }

  async getApplication(id: string): Promise<ChirpstackApplication> {
    const req = new applicationPb.GetApplicationRequest()
    req.setId(id)
    const res = await this.call<applicationPb.GetApplicationResponse>('ApplicationService.Get', (cb) => this.applications.get(req, this.metadata, this.options, cb))
    return { id, name: res.getApplication()?.getName() ?? '' }
  }

  /** Every device of an application (DeviceService.List). */
  listDevices(applicationId: string): Promise<ChirpstackDevice[]> {
    return this.all(async (offset) => {
      const req = new devicePb.ListDevicesRequest()
      req.setApplicationId(applicationId)
      req.setLimit(PAGE)
      req.setOffset(offset)
      const res = await this.call<devicePb.ListDevicesResponse>('DeviceService.List', (cb) => this.devices.list(req, this.metadata, this.options, cb))
      const items = res.getResultList().map((d) => {
        const tags: Record<string, string> = {}
        d.getTagsMap().forEach((v, k) => (tags[k] = v))
        return { devEui: d.getDevEui().toLowerCase(), name: d.getName(), deviceProfileName: d.getDeviceProfileName(), tags }
      })
      return { items, total: res.getTotalCount() }
    })
  }

  close(): void {
    this.devices.close()
    this.applications.close()
  }
}
