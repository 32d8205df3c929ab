// The rules' counters and alarms as GET /api/rules and /api/alarms answer them. Types only,
// importing nothing: the web app (ui/) names them too.

export interface RuleStats {
  name: string
  from: string
  actions: string[]
  matched: number
  dropped: number
  emitted: number
  commands: number
  republished: number
  errors: number
  evalSeconds: number
  lastError: { message: string; at: number; device: string } | null
}

export interface AlarmView {
  rule: string
  alarm: string
  productId: string
  deviceId: string
  state: 'raised' | 'cleared'
  value: unknown
  since: number
  /** set (or clear) has held since then; the state changes once forSeconds have passed. */
  pendingSince: number | null
}
