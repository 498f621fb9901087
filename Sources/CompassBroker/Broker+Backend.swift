import CompassProtocol
import CompassScheduler
import CompassWire
import Foundation
import ZMQ

extension Broker {
    /// One message from a worker: [routing id, header, command, fields...].
    func handleBackend(_ frames: [Frame]) {
        let worker = PeerID(frames[0].bytes)
        let message: WorkerMessage
        do {
            message = try WorkerMessage.decode(frames[1...])
        } catch {
            return refuseWorker(worker, error)
        }
        let t = now
        switch message {
        case .ready(let json):
            let caps: WorkerCapabilities
            do {
                caps = try json.withUnsafeBytes { try jsonDecoder.decode(WorkerCapabilities.self, from: Data($0)) }
            } catch {
                return refuseWorker(worker, ProtocolError(.badFrame, "READY capabilities: \(JSONFieldError.describe(error))"))
            }
            guard WireProtocol.isValidPoolName(caps.pool) else {
                return refuseWorker(worker, ProtocolError(.unknownPool, "pool name '\(caps.pool)' is invalid"))
            }
            guard caps.credit >= 0 else {
                return refuseWorker(worker, ProtocolError(.badFrame, "READY credit must be 0 or more (at most \(options.scheduler.maxCredit) is used), got \(caps.credit)"))
            }
            capabilities[worker] = caps
            heartbeatStats[worker] = nil
            logger.info("worker ready", metadata: [
                "worker": "\(worker)", "pool": "\(caps.pool)", "engine": "\(caps.engine)", "tp": "\(caps.tp)",
                "gpus": "\(caps.gpus.map(\.index))", "host": "\(caps.host)", "pid": "\(caps.pid)", "credit": "\(caps.credit)"])
            execute(scheduler.workerReady(worker, pool: caps.pool, credit: caps.credit, creditMode: caps.creditMode ?? .implicit,
                                          process: caps.host.isEmpty || caps.pid == 0 ? "" : "\(caps.host):\(caps.pid)", now: t))
        case .credit(let n):
            execute(scheduler.workerCredit(worker, n, now: t))
        case .progress(let id, let attempt, let done, let total):
            execute(scheduler.workerProgress(worker, batchID: id, attempt: attempt, done: done, total: total, now: t))
        case .result(let id, let attempt, let stats, let payload):
            let check = { stats.withUnsafeBytes { s in payload.withUnsafeBytes { PayloadCheck.result(stats: s, payload: $0) } } }
            execute(scheduler.workerResult(worker, batchID: id, attempt: attempt, stats: stats, payload: payload,
                                           check: options.validatePayloads ? check : nil, now: t))
        case .failed(let id, let attempt, let code, let retryable, let message, let partial):
            execute(scheduler.workerFailed(worker, batchID: id, attempt: attempt, code: AnyFailureCode(rawValue: code), retryable: retryable,
                                           message: message, partial: partial.isEmpty ? nil : partial, now: t))
        case .heartbeat(let stats):
            if !stats.isEmpty, capabilities[worker] != nil {
                heartbeatStats[worker] = try? stats.withUnsafeBytes { try jsonDecoder.decode(WorkerHeartbeatStats.self, from: Data($0)) }
            }
            execute(scheduler.workerHeartbeat(worker, now: t))
        case .bye(let reason):
            logger.info("worker draining", metadata: ["worker": "\(worker)", "reason": "\(reason)"])
            execute(scheduler.workerBye(worker, reason: reason, now: t))
        }
    }

    /// A message past the per-message bounds, of which only the first frames were kept.
    func refuseBackend(_ head: [Frame], _ problem: ProtocolError) {
        refuseWorker(PeerID(head[0].bytes), problem)
    }

    /// A worker broke the protocol: log it and tell it why with DISCONNECT; the scheduler forgets
    /// it (and requeues what it held), as DISCONNECT tells the worker to forget its batches.
    func refuseWorker(_ worker: PeerID, _ error: any Error) {
        let problem = (error as? ProtocolError) ?? ProtocolError(.badFrame, "\(error)")
        badInput.warning(logger, "rejected worker message", metadata: [
            "peer": "\(worker)", "code": "\(problem.code.rawValue)", "reason": "\(problem.message)"])
        execute(scheduler.workerRefused(worker, code: problem.code, reason: problem.message, now: now))
        capabilities[worker] = nil
        heartbeatStats[worker] = nil
    }
}
