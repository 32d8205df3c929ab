// The cloud link's state as /api/health answers it (`northbound`). Types only, importing nothing:
// the web app (ui/) names them too.

/** Why the link last failed, as health shows it: redacted (no credentials), with the gateway's error code. */
export interface LinkError {
  /** When it happened (ms). */
  at: number
  /** The gateway's error code (docs/operators/troubleshooting.md). */
  code: string
  /** What the network or the hub said: an errno (ECONNREFUSED), `connack:5` (a refused CONNECT), `closed`, `timeout`. */
  reason: string | null
  message: string
}

export interface BridgeStatus {
  configured: boolean
  connected: boolean
  since: number | null
  /** Since when the gateway's own link is down (its start, or the loss); null while up or unconfigured. */
  downSince: number | null
  links: number
  linksConnected: number
  /** The gateway's own link's last failure (redacted), kept after it is up again; null if none yet. */
  lastError: LinkError | null
  /** When the gateway's own link tries again (ms); null while up or while an attempt runs. */
  nextRetryAt: number | null
}
