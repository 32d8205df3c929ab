// The shadow document rules of PROTOCOL.md "Shadow", as pure functions: the hub simulator and the
// gateway's own shadow copies apply exactly the same arithmetic.
import type { JsonObject, ShadowDoc } from '../store/shadows.js'

export type { JsonObject, ShadowDoc }

/** Merge `patch` into `base`; a key set to null deletes it. */
export function mergeNullDeletes(base: JsonObject, patch: JsonObject): JsonObject {
  const out = { ...base }
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = v
  }
  return out
}

function stampReported(doc: ShadowDoc, patch: JsonObject, ts: number): void {
  const meta = { ...(doc.metadata.reported ?? {}) }
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete meta[k]
    else meta[k] = { timestamp: ts }
  }
  doc.metadata.reported = meta
}

/** `$shadow_updated` with a matching version: desired goes into reported, desired is dropped, version+1. */
export function applyDesired(doc: ShadowDoc, ts: number): ShadowDoc {
  const next = structuredClone(doc)
  const desired = next.state.desired ?? {}
  next.state.reported = mergeNullDeletes(next.state.reported ?? {}, desired)
  stampReported(next, desired, ts)
  delete next.state.desired
  delete next.metadata.desired
  next.version++
  next.timestamp = ts
  return next
}

/** `$shadow_reported` with a matching version: reported merged (null deletes), version+1. */
export function applyReported(doc: ShadowDoc, reported: JsonObject, ts: number): ShadowDoc {
  const next = structuredClone(doc)
  next.state.reported = mergeNullDeletes(next.state.reported ?? {}, reported)
  stampReported(next, reported, ts)
  next.version++
  next.timestamp = ts
  return next
}

/** A business system's desired change; null when `version` is not greater than the shadow's (HTTP 409). */
export function withDesired(doc: ShadowDoc, desired: JsonObject, version: number, ts: number): ShadowDoc | null {
  if (version <= doc.version) return null
  const next = structuredClone(doc)
  next.state.desired = { ...(next.state.desired ?? {}), ...desired }
  const meta = { ...(next.metadata.desired ?? {}) }
  for (const k of Object.keys(desired)) meta[k] = { timestamp: ts }
  next.metadata.desired = meta
  next.version = version
  next.timestamp = ts
  return next
}

export function parseJsonObject(payload: Buffer): JsonObject | undefined {
  if (payload.length === 0) return undefined
  try {
    const v: unknown = JSON.parse(payload.toString('utf8'))
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as JsonObject) : undefined
  } catch {
    return undefined
  }
}

export function isShadowDoc(v: unknown): v is ShadowDoc {
  const d = v as ShadowDoc | undefined
  return !!d && typeof d === 'object' && typeof d.version === 'number' && typeof d.state === 'object' && d.state !== null
}
