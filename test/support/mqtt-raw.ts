// MQTT over a bare socket: cheap enough for thousands of connections in one process.
import net from 'node:net'
import mqttPacket from 'mqtt-packet'

/** Opens an authenticated MQTT connection to 127.0.0.1:`port` and resolves once CONNACK 0 came. */
export function idleConnection (port: number, username: string, password: string, clientId: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1')
    s.once('error', reject)
    s.once('data', (d) => (d[0] === 0x20 && d[3] === 0 ? resolve(s) : reject(new Error(`CONNACK ${d[3]}`))))
    s.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 0, clientId, username, password: Buffer.from(password) }))
  })
}
