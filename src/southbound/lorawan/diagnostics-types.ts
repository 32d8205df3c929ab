// The LoRaWAN adapter's diagnostics as its routes (/api/adapters/lorawan/devices...) answer them in
// JSON. Types only, importing nothing: the web app (ui/pages/lorawan.tsx) reads them too.

/** What the adapter knows of one child and shows: radio quality, frame counter, battery, problems. */
export interface LoraChildFacts {
  device: { productId: string; deviceId: string }
  devEui: string
  applicationId?: string
  deviceProfileName?: string
  deviceClass?: string
  reachable: boolean
  lastSeen?: number
  /** The last `up`: when, its FPort and frame counter, and (FPort > 0) what the hub got of it. */
  lastUplink?: { at: number; fPort: number; fCnt: number; dataType?: string; payload?: Record<string, unknown> }
  radio?: { rssi?: number; snr?: number; gateways: number; fCnt: number; dr: number; frequency?: number }
  battery?: { level?: number; margin: number; externalPower: boolean }
  /** ChirpStack `log` events by code. */
  logs: Record<string, number>
  /** The last things that went wrong with it in this run, oldest first (at most 20). */
  problems: LoraProblem[]
}

/**
 * Something that went wrong with a LoRaWAN child: a ChirpStack `log` event of level WARNING or
 * ERROR (source `chirpstack`: its code and description as ChirpStack wrote them, at its time), or
 * what the gateway itself saw fail (source `gateway`: a downlink refused by ChirpStack's API
 * (`ENQUEUE`) or not acknowledged by the device (`NOT_ACKNOWLEDGED`), a payload its codec could
 * not decode (`CODEC`)).
 */
export interface LoraProblem {
  at: number
  source: 'chirpstack' | 'gateway'
  level: string
  code: string
  description: string
  /** The downlink it was about (the command's name, or `$update_shadow`). */
  downlink?: string
}

/** A downlink ChirpStack holds for a child whose fate the gateway still follows. */
export interface QueuedDownlinkView {
  /** ChirpStack's queue item id. */
  id: string
  what: string
  command?: string
  requestId?: string
  fPort: number
  confirmed: boolean
  /** queued: ChirpStack holds it; sent: a radio gateway took it, a confirmed one awaits the device's ack. */
  state: 'queued' | 'sent'
  queuedAt: number
  followedUntil: number
}

/** One child in the diagnostics: its facts, how often it usually sends, and its downlink queue. */
export interface LoraChildDiagnostics extends LoraChildFacts {
  usualIntervalSeconds?: number
  pendingDownlinks: number
  /** Oldest first. */
  downlinks: QueuedDownlinkView[]
}

/** GET /api/adapters/lorawan/devices */
export interface LoraDiagnostics {
  /** Connected to ChirpStack's broker. */
  connected: boolean
  devices: LoraChildDiagnostics[]
}
