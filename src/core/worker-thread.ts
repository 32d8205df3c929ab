// A worker thread running a module that sits beside the caller's: the built .js under dist/, or,
// run from the sources (tests, tsx), the .ts through tsx's loader.
import { Worker, type WorkerOptions } from 'node:worker_threads'

/** `here`: the caller's import.meta.url; `name`: the module's file name without its extension. */
export function workerBeside(here: string, name: string, opts: WorkerOptions): Worker {
  const ts = here.endsWith('.ts')
  const file = new URL(`./${name}${ts ? '.ts' : '.js'}`, here)
  return ts ? new Worker(`import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(file.href)}) })`, { ...opts, eval: true }) : new Worker(file, opts)
}
