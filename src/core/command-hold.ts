// The seam for a service that must do work before a command may reach its device (the OTA relay
// fetches and verifies the image an `$ota_upgrade` points to, then rewrites its `url`). The core
// knows only this interface; the composition root (src/gateway.ts) plugs the service in. A held
// command is deduplicated and durable like any other (it is in the command store, state 'held'),
// it is simply not delivered until the hold releases it into the device's queue, in order with
// what is queued then, or finishes it.
import type { Command } from './types.js'
import type { CommandOrigin, StoredCommand } from '../store/commands.js'

export interface CommandHold {
  /** Whether this command waits for the hold (asked before it is stored). */
  takes(cmd: Command, origin: CommandOrigin): boolean
  /**
   * A command was stored as held (called after the write is durable). Also called at start for
   * every command still held, so that a hold picks up where it stopped after a restart or kill -9.
   */
  held(sc: StoredCommand): void
}

/** What a hold may do with the commands it holds (CommandRouter implements it). */
export interface HeldCommands {
  /** Into the device's queue with this payload (e.g. the rewritten `url`), delivered in order from now on. */
  release(id: number, payload: Buffer): boolean
  /** Never delivered: recorded with this state and reason in the device's command history. */
  finish(id: number, state: 'failed' | 'expired' | 'dropped', reason: string): void
  /** Every command still held, oldest first. */
  heldCommands(): StoredCommand[]
}
