// The baseline: bare Aedes, same version as streamgate's, TCP_NODELAY, nothing else.
import net from 'node:net'
import { Aedes } from 'aedes'

const aedes = await Aedes.createBroker()
const server = net.createServer({ noDelay: true }, aedes.handle)
server.listen(0, '127.0.0.1', () => {
  const addr = server.address() as net.AddressInfo
  process.stdout.write(`READY ${addr.port}\n`)
})
process.on('SIGTERM', () => { server.close(); aedes.close(() => process.exit(0)) })
