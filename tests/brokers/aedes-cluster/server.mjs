// One aedes (MQTT 5) node of a cluster: messages between nodes through Redis pub/sub
// (mqemitter-redis), sessions, subscriptions and QoS 1 queues in Redis (aedes-persistence-redis),
// so a persistent session resumes on another node. Nagle off, as in ../aedes/server.mjs.
// node server.mjs <mqtt port> <redis port> <node id>
import net from 'node:net'
import { Aedes } from 'aedes'
import mqemitterRedis from 'mqemitter-redis'
import persistenceRedis from 'aedes-persistence-redis'

const [port, redisPort, id] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]]
const redis = { host: '127.0.0.1', port: redisPort }
const aedes = await Aedes.createBroker({ id, mq: mqemitterRedis(redis), persistence: persistenceRedis(redis) })
const server = net.createServer({ noDelay: true }, aedes.handle)
server.listen(port, '127.0.0.1', () => console.log(`aedes ${id} listening on ${port}`))
process.on('SIGTERM', () => server.close(() => aedes.close(() => process.exit(0))))
