// The OTA relay's jobs as GET /api/ota/jobs answers them. Types only, importing nothing: the web
// app (ui/) names them too.

/** Where one device of a job is. */
export type TargetState = 'waiting' | 'queued' | 'delivered' | 'downloading' | 'reported' | 'done' | 'failed' | 'expired'

export interface OtaJobView {
  job: string
  origin: string
  version: string
  type: string
  image: string
  expiresAt: number
  /** Devices of this job with an image on the way at once (0 = no limit of its own). */
  maxConcurrent: number
  devices: { device: string; state: TargetState; bytesServed: number; progress: number | null; reason: string | null }[]
}
