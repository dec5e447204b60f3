// Authentication through passport: one strategy reads `Authorization: Bearer <credential>` or
// `X-API-Key: <key>`. A credential is an API key, a token this gateway signed (POST /v1/auth/token),
// or a JWT from the configured issuer whose principal claim names an existing principal. Authorization
// helpers name the grant a request lacks, and every denial is audited.
import { randomUUID } from 'node:crypto'
import type { Request, RequestHandler } from 'express'
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, SignJWT, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import passport from 'passport'
import type { Config } from '../config/index.js'
import { type AccessState, type Action, type Actor, FailureWindow, type Management, type Principal, StreamgateError } from '../gateway/index.js'

export interface AuthUser {
  readonly principal: Principal
  /** The API key used, directly or through a token it was exchanged for; null for external JWTs. */
  readonly keyId: string | null
  readonly via: 'key' | 'token' | 'jwt'
}

/** Our own tokens: HS256, issuer `streamgate`, `sub` the principal, `key` the key they were exchanged for. */
export const TOKEN_ISSUER = 'streamgate'
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

export interface Tokens {
  /** Signs a token for a principal authenticated with `keyId`. */
  issue (principal: string, keyId: string): Promise<{ token: string, expiresIn: number }>
  /** The user a credential stands for, or null (unknown, expired, revoked, disabled). */
  verify (credential: string): Promise<AuthUser | null>
}

export function createTokens (access: AccessState, api: Config['api'], secret: Uint8Array): Tokens {
  const external = api.jwt
  let externalKey: JWTVerifyGetKey | Uint8Array | null = null
  if (external !== null) externalKey = external.jwks !== null ? createRemoteJWKSet(new URL(external.jwks)) : new TextEncoder().encode(external.secret!)

  const user = (principalId: unknown, keyId: string | null, via: AuthUser['via']): AuthUser | null => {
    if (typeof principalId !== 'string') return null
    const principal = access.getPrincipal(principalId)
    if (principal === undefined || principal.disabled) return null
    if (keyId !== null) {
      // A token dies with the key it was exchanged for.
      const k = access.getKey(keyId)
      if (k === undefined || k.principal !== principal.id || k.revokedAt !== null || (k.expiresAt !== null && Date.parse(k.expiresAt) <= Date.now())) return null
    }
    return { principal, keyId, via }
  }

  return {
    async issue (principal, keyId) {
      const token = await new SignJWT({ key: keyId })
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
        .setIssuer(TOKEN_ISSUER).setSubject(principal).setJti(randomUUID())
        .setIssuedAt().setExpirationTime(`${api.tokenTtlS}s`)
        .sign(secret)
      return { token, expiresIn: api.tokenTtlS }
    },
    async verify (credential) {
      if (!JWT_SHAPE.test(credential)) {
        const r = access.authenticate(undefined, credential, Date.now())
        return r.ok ? { principal: r.principal, keyId: r.key.id, via: 'key' } : null
      }
      let payload: JWTPayload
      try {
        // `algorithms` pins what each issuer may use: `alg: none` and algorithm confusion are refused.
        payload = (await jwtVerify(credential, secret, { issuer: TOKEN_ISSUER, algorithms: ['HS256'] })).payload
        return user(payload.sub, typeof payload.key === 'string' ? payload.key : '', 'token')
      } catch (err) {
        if (external === null || externalKey === null || !(err instanceof joseErrors.JOSEError)) return null
      }
      try {
        // `exp` is required: jose checks it only when present, and a token without one would never expire.
        const options = { issuer: external.issuer, requiredClaims: ['exp'], ...(external.audience !== null ? { audience: external.audience } : {}), algorithms: external.jwks !== null ? ['RS256', 'ES256', 'EdDSA', 'PS256'] : ['HS256'] }
        payload = externalKey instanceof Uint8Array
          ? (await jwtVerify(credential, externalKey, options)).payload
          : (await jwtVerify(credential, externalKey, options)).payload
      } catch {
        return null
      }
      return user(payload[external.principalClaim], null, 'jwt')
    }
  }
}

class CredentialStrategy extends passport.Strategy {
  override name = 'streamgate'
  constructor (private readonly tokens: Tokens) { super() }

  override authenticate (req: Request): void {
    const header = req.headers.authorization
    const apiKey = req.headers['x-api-key']
    let credential: string | undefined
    if (header !== undefined) {
      const m = /^Bearer +([\x21-\x7e]{1,4096})$/i.exec(header)
      if (m === null) return this.fail('Bearer realm="streamgate", error="invalid_request"', 401)
      credential = m[1]
    } else if (typeof apiKey === 'string') {
      credential = apiKey
    }
    if (credential === undefined) return this.fail('Bearer realm="streamgate"', 401)
    this.tokens.verify(credential).then(
      (u) => u === null ? this.fail('Bearer realm="streamgate", error="invalid_token"', 401) : this.success(u),
      (err: unknown) => this.error(err as Error))
  }
}

export interface Authenticator {
  /** Requires valid credentials; refusals are audited. */
  readonly required: RequestHandler
}

/**
 * `failuresPerMinute` (STREAMGATE_API_AUTH_FAILURES_PER_MINUTE, off by default): failed logins from one
 * source address in a minute before every request of that address presenting credentials gets 429 for
 * the rest of the minute, good credentials too (a key guesser learns nothing more). Off by default:
 * behind a balancer or NAT every client shares the address, and API keys are 256-bit random secrets
 * that the per-address rate (STREAMGATE_API_RATE_PER_ADDRESS) already keeps out of reach of guessing.
 */
export function createAuthenticator (tokens: Tokens, management: Management, failuresPerMinute = 0): Authenticator {
  const auth = new passport.Passport()
  auth.use(new CredentialStrategy(tokens))
  const handler = auth.authenticate('streamgate', { session: false, failWithError: true }) as RequestHandler
  const failures = new FailureWindow(failuresPerMinute, 60_000)
  return {
    required: (req, res, next) => {
      const address = req.socket.remoteAddress ?? ''
      // Requests without credentials are not guesses (and are refused anyway).
      const presented = req.headers.authorization !== undefined || req.headers['x-api-key'] !== undefined
      if (presented && failures.blocked(address)) {
        management.denied(actorOf(req), 'auth.blocked', `api${req.path}`, `more than STREAMGATE_API_AUTH_FAILURES_PER_MINUTE=${failuresPerMinute} failed logins from this address in the minute`)
        return next(new StreamgateError('SG_ERR_RATE_LIMITED', `too many failed logins from this address: every request is refused for the rest of the minute (STREAMGATE_API_AUTH_FAILURES_PER_MINUTE=${failuresPerMinute})`, { retryAfter: failures.secondsLeft() }))
      }
      handler(req, res, (err?: unknown) => {
        if (err !== undefined && err !== null) {
          if ((err as { status?: number }).status !== 401) return next(err)
          if (presented) failures.fail(address)
          res.setHeader('WWW-Authenticate', 'Bearer realm="streamgate"')
          management.denied(actorOf(req), 'auth.failed', `api${req.path}`, 'missing, unknown, expired or revoked credentials')
          return next(new StreamgateError('SG_ERR_UNAUTHENTICATED', 'send Authorization: Bearer <API key or token> (or X-API-Key) with a valid, unrevoked key'))
        }
        next()
      })
    }
  }
}

export function userOf (req: Request): AuthUser {
  const u = req.user as AuthUser | undefined
  if (u === undefined) throw new StreamgateError('SG_ERR_UNAUTHENTICATED', 'not authenticated')
  return u
}

/** Who made the request, for the audit log. */
export function actorOf (req: Request): Actor {
  const u = req.user as AuthUser | undefined
  return { principal: u?.principal.id ?? null, address: req.socket.remoteAddress ?? null, requestId: typeof req.id === 'string' ? req.id : null }
}

export interface Guard {
  /** Refuses the request (403, naming what is missing) and audits the denial. */
  deny (req: Request, resource: string, detail: string, missing: unknown): never
  admin (req: Request): AuthUser
  /** Passes when the principal holds any of `actions` on `dataset` (admins hold all). */
  grant (req: Request, dataset: string, ...actions: Action[]): AuthUser
}

export function createGuard (management: Management): Guard {
  const deny = (req: Request, resource: string, detail: string, missing: unknown): never => {
    management.denied(actorOf(req), 'access.denied', resource, detail)
    throw new StreamgateError('SG_ERR_FORBIDDEN', detail, { missing })
  }
  return {
    deny,
    admin (req) {
      const u = userOf(req)
      if (u.principal.kind !== 'admin') deny(req, `api${req.path}`, `${u.principal.id} is not an admin`, 'admin')
      return u
    },
    grant (req, dataset, ...actions) {
      const u = userOf(req)
      if (!actions.some((a) => management.access.can(u.principal.id, a, dataset))) {
        deny(req, `datasets/${dataset}`, `${u.principal.id} lacks ${actions.join(' or ')} on dataset ${dataset}`, { dataset, actions })
      }
      return u
    }
  }
}
