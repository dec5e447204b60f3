// RabbitMQ's HTTP auth backend (rabbitmq_auth_backend_http), served from streamgate's principals, keys
// and grants, so one ACL holds for MQTT and AMQP. RabbitMQ calls four paths with form-encoded
// parameters and reads a plain-text answer: "allow" (optionally followed by tags) or "deny".
//   user:     username, password                 → is this a principal with this key?
//   vhost:    username, vhost, ip                → any vhost for a known principal
//   resource: username, vhost, resource (exchange|queue|topic), name, permission (configure|write|read)
//   topic:    username, vhost, resource=topic, name (exchange), permission (write|read), routing_key
// https://github.com/rabbitmq/rabbitmq-server/tree/main/deps/rabbitmq_auth_backend_http
import express, { type Router } from 'express'
import type { AccessState } from '../../gateway/index.js'
import { isDatasetId, isPrincipalId } from '../../gateway/index.js'

export interface Exchanges { readonly ingest: string, readonly records: string }

export type AuthPath = 'user' | 'vhost' | 'resource' | 'topic'

/** The decision for one auth backend call: "allow", "allow <tags>" or "deny". Pure, deny by default. */
export function rabbitDecision (access: AccessState, exchanges: Exchanges, path: AuthPath, p: Readonly<Record<string, string | undefined>>, now = Date.now()): string {
  const user = p.username ?? ''
  const principal = access.getPrincipal(user)
  if (principal === undefined || principal.disabled) return 'deny'
  const admin = principal.kind === 'admin'
  switch (path) {
    case 'user': {
      const r = access.authenticate(user, p.password ?? '', now)
      return r.ok ? (admin ? 'allow administrator management' : 'allow') : 'deny'
    }
    case 'vhost':
      return 'allow'
    case 'resource': {
      if (admin) return 'allow'
      const name = p.name ?? ''
      const perm = p.permission ?? ''
      if (p.resource === 'exchange') {
        // Producers write to the ingest exchange; consumers bind (read) from the records exchange.
        // Which routing keys they may use is decided per key by the topic check.
        if (name === exchanges.ingest && perm === 'write') return 'allow'
        if (name === exchanges.records && perm === 'read') return 'allow'
        return 'deny'
      }
      if (p.resource === 'queue') {
        // A principal's own queues: server-named ones, or names it owns by prefix.
        return name.startsWith('amq.gen-') || name.startsWith(`${user}.`) ? 'allow' : 'deny'
      }
      return 'deny'
    }
    case 'topic': {
      const key = p.routing_key ?? ''
      const dot = key.indexOf('.')
      const dataset = dot < 0 ? key : key.slice(0, dot)
      const rest = dot < 0 ? '' : key.slice(dot + 1)
      // The dataset word must be literal: `*.x` or `#` could reach datasets not granted.
      if (!isDatasetId(dataset)) return admin ? 'allow' : 'deny'
      if (p.name === exchanges.ingest && p.permission === 'write') {
        return isPrincipalId(rest) && access.canPublish(user, dataset, rest) ? 'allow' : 'deny'
      }
      if (p.name === exchanges.records && p.permission === 'read') {
        return access.can(user, 'subscribe', dataset) ? 'allow' : 'deny'
      }
      return admin ? 'allow' : 'deny'
    }
  }
}

/** The auth backend's HTTP paths (GET or POST, as `auth_http.http_method` says). */
export function rabbitAuthRouter (access: AccessState, exchanges: Exchanges, onDeny?: (path: AuthPath, params: Record<string, string | undefined>) => void): Router {
  const router = express.Router()
  router.use(express.urlencoded({ extended: false, limit: '16kb' }))
  for (const path of ['user', 'vhost', 'resource', 'topic'] as const) {
    router.all(`/auth/${path}`, (req, res) => {
      const src = (req.method === 'POST' ? req.body : req.query) as Record<string, unknown>
      const params: Record<string, string | undefined> = {}
      for (const [k, v] of Object.entries(src ?? {})) if (typeof v === 'string') params[k] = v
      const answer = rabbitDecision(access, exchanges, path, params)
      if (answer === 'deny') onDeny?.(path, { ...params, password: undefined })
      res.type('text/plain').send(answer)
    })
  }
  return router
}
