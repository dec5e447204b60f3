// Authentication through passport: `Authorization: Bearer <API key>`. Authorization helpers name the
// grant a request lacks.
import type { RequestHandler, Request } from 'express'
import passport from 'passport'
import { Strategy as BearerStrategy } from 'passport-http-bearer'
import { type AccessState, type Action, type Principal, StreamgateError } from '../gateway/index.js'

export interface AuthUser { readonly principal: Principal, readonly keyId: string }

export function createAuthenticator (access: AccessState): RequestHandler {
  const auth = new passport.Passport()
  auth.use(new BearerStrategy((token, done) => {
    const r = access.authenticate(undefined, token, Date.now())
    if (!r.ok) return done(null, false)
    const user: AuthUser = { principal: r.principal, keyId: r.key.id }
    return done(null, user)
  }))
  const handler = auth.authenticate('bearer', { session: false, failWithError: true }) as RequestHandler
  return (req, res, next) => {
    handler(req, res, (err?: unknown) => {
      if (err !== undefined && err !== null) {
        res.setHeader('WWW-Authenticate', 'Bearer realm="streamgate"')
        return next(new StreamgateError('SG_ERR_UNAUTHENTICATED', 'send Authorization: Bearer <API key> with a valid, unrevoked key'))
      }
      next()
    })
  }
}

export function userOf (req: Request): AuthUser {
  const u = req.user as AuthUser | undefined
  if (u === undefined) throw new StreamgateError('SG_ERR_UNAUTHENTICATED', 'not authenticated')
  return u
}

export function requireAdmin (req: Request): AuthUser {
  const u = userOf(req)
  if (u.principal.kind !== 'admin') throw new StreamgateError('SG_ERR_FORBIDDEN', `${u.principal.id} is not an admin`, { missing: 'admin' })
  return u
}

/** Passes when the principal holds any of `actions` on `dataset` (admins hold all). */
export function requireGrant (req: Request, access: AccessState, dataset: string, ...actions: Action[]): AuthUser {
  const u = userOf(req)
  if (actions.some((a) => access.can(u.principal.id, a, dataset))) return u
  throw new StreamgateError('SG_ERR_FORBIDDEN', `${u.principal.id} lacks ${actions.join(' or ')} on dataset ${dataset}`, { missing: { dataset, actions } })
}
