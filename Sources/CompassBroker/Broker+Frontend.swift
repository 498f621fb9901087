import CompassProtocol
import CompassScheduler
import CompassSystem
import CompassWire
import Foundation
import ZMQ

extension Broker {
    /// One message from a producer: [routing id, header, command, fields...].
    func handleFrontend(_ frames: [Frame]) {
        let route = PeerID(frames[0].bytes)
        let request: ProducerRequest
        do {
            request = try ProducerRequest.decode(frames[1...])
        } catch {
            refuse(route, batchID: "", error)
            return
        }
        let t = now
        switch request {
        case .submit(let batchID, let pool, var meta, let payload):
            if payload.count > options.maxPayloadBytes {
                return refuse(route, batchID: batchID, ProtocolError(.tooLarge,
                    "payload of \(payload.count) bytes exceeds the broker's limit of \(options.maxPayloadBytes) bytes; split the batch"))
            }
            if options.validatePayloads {
                switch payload.withUnsafeBytes({ PayloadCheck.submit($0, declaredCount: meta.requestCount) }) {
                case .success(let count): meta.requestCount = count
                case .failure(let problem): return refuse(route, batchID: batchID, problem)
                }
            }
            execute(scheduler.submit(from: route, batchID: batchID, pool: pool, meta: meta, payload: payload, now: t))
        case .hello(let session):
            execute(scheduler.hello(from: route, session: session, now: t))
        case .cancel(let batchID):
            execute(scheduler.cancel(from: route, batchID: batchID, now: t))
        case .ack(let batchID):
            execute(scheduler.ack(from: route, batchID: batchID, now: t))
        case .status:
            sendProducer(route, .status(json: jsonFrame(status())))
        case .heartbeat:
            execute(scheduler.producerHeartbeat(from: route, now: t))
        }
    }

    /// A message past the per-message bounds, of which only the first frames were kept.
    func refuseFrontend(_ head: [Frame], _ problem: ProtocolError) {
        refuse(PeerID(head[0].bytes), batchID: "", problem)
    }

    /// Sends REJECTED for a message that broke the protocol, and logs it (rate-limited).
    func refuse(_ route: PeerID, batchID: String, _ error: any Error) {
        let problem = (error as? ProtocolError) ?? ProtocolError(.badFrame, "\(error)")
        badInput.warning(logger, "rejected producer message", metadata: [
            "peer": "\(route)", "batch": "\(batchID)", "code": "\(problem.code.rawValue)", "reason": "\(problem.message)"])
        sendProducer(route, .rejected(batchID: batchID, code: problem.code.rawValue, message: problem.message, retryAfterMilliseconds: 0))
    }

    /// Requests completed per second per pool, over the samples of the last 10 seconds.
    func rates() -> [String: Double] {
        var out: [String: Double] = [:]
        for (pool, samples) in rateSamples {
            guard let first = samples.first, let last = samples.last, last.at > first.at else { out[pool] = 0; continue }
            out[pool] = Double(last.completed - first.completed) / (Double(last.at - first.at) / 1000)
        }
        return out
    }

    /// The STATUS document.
    func status() -> BrokerStatus {
        let snapshot = scheduler.snapshot(now: now)
        return BrokerStatus(
            brokerID: instanceID, version: compassVersion, protocolVersion: Int(WireProtocol.version),
            uptimeSeconds: Double(MonotonicClock.nanoseconds() - startedAt) / 1e9,
            frontend: frontendEndpoint, backend: backendEndpoint, accepting: scheduler.accepting,
            security: zap == nil ? "plaintext" : "curve", curveRefusals: zap == nil ? nil : refusals,
            scheduler: snapshot,
            workers: snapshot.workers.map { w in
                let id = capabilities.keys.first { $0.description == w.id }
                return .init(id: w.id, capabilities: id.flatMap { capabilities[$0] }, gpus: id.flatMap { heartbeatStats[$0]?.gpus },
                             engineRestarts: id.flatMap { heartbeatStats[$0]?.engineRestarts })
            },
            requestsPerSecond: rates())
    }
}
