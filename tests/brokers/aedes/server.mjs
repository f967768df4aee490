// aedes (MQTT 5) on 127.0.0.1:<port>, Nagle off (without noDelay its p99 latency doubles).
import net from 'node:net'
import { Aedes } from 'aedes'

const port = Number(process.argv[2])
const aedes = await Aedes.createBroker()
const server = net.createServer({ noDelay: true }, aedes.handle)
server.listen(port, '127.0.0.1', () => console.log(`aedes listening on ${port}`))
process.on('SIGTERM', () => server.close(() => aedes.close(() => process.exit(0))))
