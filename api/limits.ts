// Rate limits on the API, per source address (before authentication, so guessing keys is limited
// too) and per principal (after it). Over a limit: 429 problem+json with Retry-After. Every answer
// carries the limit it was counted against (RateLimit-Policy / RateLimit, draft-ietf-httpapi-ratelimit-headers).
import type { Request, RequestHandler, Response } from 'express'
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible'
import { principalKinds, type PrincipalKind, type SharedRates, StreamgateError } from '../gateway/index.js'
import { userOf } from './auth.js'

function headers (res: Response, name: string, limit: number, r: { remaining: number, msBeforeNext: number }): void {
  const reset = Math.max(1, Math.ceil(r.msBeforeNext / 1000))
  res.setHeader('RateLimit-Policy', `"${name}";q=${limit};w=1`)
  res.setHeader('RateLimit', `"${name}";r=${Math.max(0, r.remaining)};t=${reset}`)
}

/** This node's own count (rate-limiter-flexible in memory), in SharedRates' shape. */
function memoryRate (perSecond: number): (key: string) => Promise<{ ok: boolean, remaining: number, msBeforeNext: number }> {
  const rl = new RateLimiterMemory({ points: perSecond, duration: 1 })
  return (k) => rl.consume(k).then(
    (r) => ({ ok: true, remaining: r.remainingPoints, msBeforeNext: r.msBeforeNext }),
    (r: unknown) => {
      if (r instanceof RateLimiterRes) return { ok: false, remaining: r.remainingPoints, msBeforeNext: r.msBeforeNext }
      throw r
    })
}

function limiter (name: string, perSecond: number, key: (req: Request) => string, shared?: SharedRates): RequestHandler {
  if (perSecond <= 0) return (_req, _res, next) => next()
  // Counted across every node when they share a store (Redis), else in this node's memory.
  const take = shared !== undefined
    ? (k: string) => shared.take(`api-${name}:${k}`, perSecond)
    : memoryRate(perSecond)
  return (req, res, next) => {
    take(key(req)).then((r) => {
      headers(res, name, perSecond, r)
      if (r.ok) return next()
      const retry = Math.max(1, Math.ceil(r.msBeforeNext / 1000))
      next(new StreamgateError('SG_ERR_RATE_LIMITED', `more than ${perSecond} requests a second ${name === 'address' ? 'from this address' : 'for this principal'}; retry in ${retry} s`, { retryAfter: retry, limit: name }))
    }, next)
  }
}

export function perAddress (perSecond: number, shared?: SharedRates): RequestHandler {
  return limiter('address', perSecond, (req) => req.socket.remoteAddress ?? 'unknown', shared)
}

/** Per principal, at the rate of its kind (STREAMGATE_API_RATE, or STREAMGATE_API_RATE_<KIND>). */
export function perPrincipal (perSecond: Readonly<Record<PrincipalKind, number>>, shared?: SharedRates): RequestHandler {
  const byKind = Object.fromEntries(principalKinds.map((k) => [k, limiter('principal', perSecond[k], (req) => userOf(req).principal.id, shared)])) as Record<PrincipalKind, RequestHandler>
  return (req, res, next) => byKind[userOf(req).principal.kind](req, res, next)
}
