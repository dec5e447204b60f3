// Rate limits on the API, per source address (before authentication, so guessing keys is limited
// too) and per principal (after it). Over a limit: 429 problem+json with Retry-After. Every answer
// carries the limit it was counted against (RateLimit-Policy / RateLimit, draft-ietf-httpapi-ratelimit-headers).
import type { Request, RequestHandler, Response } from 'express'
import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible'
import { StreamgateError } from '../gateway/index.js'
import { userOf } from './auth.js'

function headers (res: Response, name: string, limit: number, r: RateLimiterRes): void {
  const reset = Math.max(1, Math.ceil(r.msBeforeNext / 1000))
  res.setHeader('RateLimit-Policy', `"${name}";q=${limit};w=1`)
  res.setHeader('RateLimit', `"${name}";r=${Math.max(0, r.remainingPoints)};t=${reset}`)
}

function limiter (name: string, perSecond: number, key: (req: Request) => string): RequestHandler {
  if (perSecond <= 0) return (_req, _res, next) => next()
  const rl = new RateLimiterMemory({ points: perSecond, duration: 1 })
  return (req, res, next) => {
    rl.consume(key(req)).then((r) => {
      headers(res, name, perSecond, r)
      next()
    }, (r: unknown) => {
      if (!(r instanceof RateLimiterRes)) return next(r)
      headers(res, name, perSecond, r)
      const retry = Math.max(1, Math.ceil(r.msBeforeNext / 1000))
      next(new StreamgateError('SG_ERR_RATE_LIMITED', `more than ${perSecond} requests a second ${name === 'address' ? 'from this address' : 'for this principal'}; retry in ${retry} s`, { retryAfter: retry, limit: name }))
    })
  }
}

export function perAddress (perSecond: number): RequestHandler {
  return limiter('address', perSecond, (req) => req.socket.remoteAddress ?? 'unknown')
}

export function perPrincipal (perSecond: number): RequestHandler {
  return limiter('principal', perSecond, (req) => userOf(req).principal.id)
}
