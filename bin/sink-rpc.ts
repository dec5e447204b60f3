// Calls and events over a worker's message port, used both ways between the gateway and its sink
// thread. Errors cross as { code, message, details } so a StreamgateError keeps its problem type.
import type { MessagePort, Worker } from 'node:worker_threads'
import { type ErrorCode, errorCatalogue, StreamgateError } from '../gateway/index.js'

type Port = Pick<MessagePort | Worker, 'postMessage' | 'on' | 'off'>

interface WireError { readonly message: string, readonly code?: string, readonly details?: Record<string, unknown> }

type Message =
  | { readonly t: 'call', readonly id: number, readonly method: string, readonly args: unknown[] }
  | { readonly t: 'ok', readonly id: number, readonly value: unknown }
  | { readonly t: 'err', readonly id: number, readonly error: WireError }
  | { readonly t: 'event', readonly name: string, readonly payload: unknown }

function toWire (err: unknown): WireError {
  if (err instanceof StreamgateError) return { message: err.message, code: err.code, details: { ...err.details } }
  return { message: err instanceof Error ? err.message : String(err) }
}

function fromWire (e: WireError): Error {
  if (e.code !== undefined && Object.hasOwn(errorCatalogue, e.code)) return new StreamgateError(e.code as ErrorCode, e.message, e.details ?? {})
  return new Error(e.message)
}

export class Rpc {
  private nextId = 1
  /** Calls not answered yet, oldest first (a Map keeps insertion order). */
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void, reject: (e: Error) => void, since: number }>()
  private readonly handlers = new Map<string, (...args: never[]) => unknown>()
  private readonly listeners = new Map<string, (payload: never) => void>()
  private failure: Error | null = null

  constructor (private readonly port: Port) {
    port.on('message', this.onMessage)
  }

  /** Serves `method` for the other side; its result (or thrown error) is the answer. */
  handle<A extends unknown[]> (method: string, fn: (...args: A) => unknown): void {
    this.handlers.set(method, fn as (...args: never[]) => unknown)
  }

  on<P> (event: string, fn: (payload: P) => void): void {
    this.listeners.set(event, fn as (payload: never) => void)
  }

  call<T> (method: string, ...args: unknown[]): Promise<T> {
    if (this.failure !== null) return Promise.reject(this.failure)
    const id = this.nextId++
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, since: performance.now() })
      this.port.postMessage({ t: 'call', id, method, args } satisfies Message)
    })
  }

  /** How long the oldest call not answered yet has waited, ms (0: none). */
  oldestCallMs (): number {
    for (const w of this.waiting.values()) return performance.now() - w.since
    return 0
  }

  emit (name: string, payload: unknown): void {
    this.port.postMessage({ t: 'event', name, payload } satisfies Message)
  }

  /** Rejects every call in flight and every later one (the other side is gone). */
  fail (err: Error): void {
    this.failure = err
    for (const w of this.waiting.values()) w.reject(err)
    this.waiting.clear()
  }

  close (): void {
    this.port.off('message', this.onMessage)
  }

  private readonly onMessage = (m: Message): void => {
    switch (m.t) {
      case 'call': {
        const fn = this.handlers.get(m.method)
        const answer = (p: Promise<unknown>): void => {
          p.then((value) => this.port.postMessage({ t: 'ok', id: m.id, value } satisfies Message),
            (err: unknown) => this.port.postMessage({ t: 'err', id: m.id, error: toWire(err) } satisfies Message))
        }
        if (fn === undefined) answer(Promise.reject(new Error(`no handler for ${m.method}`)))
        else answer(Promise.resolve().then(() => fn(...m.args as never[])))
        break
      }
      case 'ok':
      case 'err': {
        const w = this.waiting.get(m.id)
        if (w === undefined) return
        this.waiting.delete(m.id)
        if (m.t === 'ok') w.resolve(m.value)
        else w.reject(fromWire(m.error))
        break
      }
      case 'event':
        this.listeners.get(m.name)?.(m.payload as never)
        break
    }
  }
}
