import CompassProtocol
import Foundation
import Logging

extension Worker {
    /// The log line of each state-machine event. Tests and scripts match some of these words
    /// ("registered with broker", "engine ready", "engine died", "SIGTERM: draining"): keep them.
    func log(_ event: WorkerEvent) {
        switch event {
        case .connecting, .engineStarting:
            break // logged where the connection is made and the engine started
        case .registered(let heartbeat, let mode):
            logger.info("registered with broker", metadata: ["worker": "\(identity)", "heartbeat_ms": "\(heartbeat)", "credit_mode": "\(mode.rawValue)"])
        case .implicitCredit(let window):
            logger.warning("the broker returns credit with every result (it predates explicit credit): the worker keeps a window of \(window) batches and cannot fill its engine's capacity with small batches; upgrade the broker")
        case .brokerLost(let reason, let delay):
            logger.warning("lost the broker; reconnecting", metadata: ["reason": "\(reason)", "in_ms": "\(delay)"])
        case .reregistering(let reason):
            logger.warning("broker asked us to register again", metadata: ["reason": "\(reason)"])
        case .engineReady(let detail, let capacity, let startup):
            logger.info("engine ready", metadata: ["detail": "\(detail)", "startup_ms": "\(startup)", "capacity": "\(capacity)"])
        case .engineStartFailed(let reason, let attempt, let delay):
            logger.error("engine failed to start", metadata: ["reason": "\(reason)", "attempt": "\(attempt)", "retry_in_ms": "\(delay)"])
        case .engineGaveUp(let failures, let lastError):
            logger.critical("the engine failed to start \(failures) times in a row; giving up", metadata: ["last_error": "\(lastError)"])
        case .engineDied(let code, let message, let restarts):
            logger.error("engine died", metadata: ["code": "\(code.rawValue)", "reason": "\(message)", "restarts": "\(restarts)"])
        case .watchdog(let batchID, let stalled):
            logger.error("engine made no progress; killing it", metadata: ["batch": "\(batchID)", "stalled_ms": "\(stalled)"])
        case .batchFailed(let batchID, let code, let message):
            logger.warning("batch failed in the engine", metadata: ["batch": "\(batchID)", "code": "\(code.rawValue)", "reason": "\(message)"])
        case .draining(let signal, let running, let held):
            logger.info("\(signal): draining", metadata: ["running": "\(running)", "queued": "\(held)"])
        case .secondSignal(let signal):
            logger.warning("second \(signal): handing back and exiting now")
        case .drainTimeout:
            logger.warning("drain time over; handing back the running batches")
        case .handshakeRefused(let reason):
            logger.critical("\(reason)")
        case .engineStatistics(let stats, let occupancy, let inEngine, let held, let completed):
            logger.info("engine statistics", metadata: [
                "capacity": "\(stats.capacity)", "steps": "\(stats.steps)", "sequence_steps": "\(stats.sequenceSteps)",
                "occupancy": "\(occupancy.map { String(format: "%.3f", $0) } ?? "-")", "in_engine": "\(inEngine)",
                "held": "\(held)", "completed": "\(completed)"])
        }
    }
}
