// `{p}/{d}` in device URLs. Not pattern-checked: an id that cannot exist is simply not found (404).
import { Type, type Static } from '@sinclair/typebox'
import type { DeviceRef } from '../../core/types.js'

export const DeviceParams = Type.Object({ p: Type.String(), d: Type.String() })
export type DeviceParams = Static<typeof DeviceParams>

export const refOf = (params: DeviceParams): DeviceRef => ({ productId: params.p, deviceId: params.d })

export const NOT_FOUND = { error: 'not_found' }
