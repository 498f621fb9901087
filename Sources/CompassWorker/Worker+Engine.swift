import CompassEngines
import CompassSystem
import CompassProtocol
import CompassWire
import Foundation
import ZMQ

extension Worker {
    func startEngine() throws {
        engineReady = false
        engineStartedAt = now
        logger.info("starting engine", metadata: ["engine": "\(engine.name)", "model": "\(options.model)"])
        do {
            try engine.start()
        } catch {
            engineFailedToStart("\(error)")
        }
    }

    /// A start failed or timed out: retry with backoff, or give up after too many in a row.
    func engineFailedToStart(_ reason: String) {
        engine.stop()
        startFailures += 1
        if startFailures >= options.maxStartFailures {
            logger.critical("the engine failed to start \(startFailures) times in a row; giving up", metadata: ["last_error": "\(reason)"])
            exitCode = 3
            return
        }
        logger.error("engine failed to start", metadata: ["reason": "\(reason)", "attempt": "\(startFailures)", "retry_in_ms": "\(restartDelay)"])
        failRunning(.startupFailed, reason)
        scheduleRestart()
    }

    func scheduleRestart() {
        engineReady = false
        restartAt = now + restartDelay
        restartDelay = min(restartDelay * 2, options.restartMaxMilliseconds)
    }

    func handleEngine(_ event: EngineEvent) {
        switch event {
        case .ready(let detail, let maxBatches):
            engineReady = true
            let grew = maxBatches > engineCapacity
            engineCapacity = maxBatches
            startFailures = 0
            restartDelay = options.restartMinMilliseconds
            logger.info("engine ready", metadata: ["detail": "\(detail)", "startup_ms": "\(now.since(engineStartedAt))", "max_batches": "\(maxBatches)"])
            if socket == nil && connectAt == nil && drainingSince == nil {
                try? connect()
            } else if grew && registered {
                send(.credit(UInt32(maxBatches - 1))) // the engine takes more at once than it did
            }
            startNext()
        case .progress(let id, let attempt, let done, let total):
            guard running.contains(where: { $0.batchID == id && $0.attempt == attempt }) else { return }
            lastProgress = now
            if now.since(lastProgressSent) >= 200 {
                lastProgressSent = now
                send(.progress(batchID: id, attempt: attempt, done: done, total: total))
            }
        case .finished(let id, let attempt, let payload, let stats):
            guard take(id, attempt) else { return }
            completed += 1
            let statsFrame = Frame(bytes: (try? JSONEncoder().encode(stats)) ?? Data("{}".utf8))
            send(.result(batchID: id, attempt: attempt, stats: statsFrame, payload: Frame(bytes: payload)))
            startNext()
        case .failed(let id, let attempt, let code, let retryable, let message):
            guard take(id, attempt) else { return }
            logger.warning("batch failed in the engine", metadata: ["batch": "\(id)", "code": "\(code.rawValue)", "reason": "\(message)"])
            send(.failed(batchID: id, attempt: attempt, code: code.rawValue, retryable: retryable, message: message, partial: Frame(bytes: [UInt8]())))
            startNext()
        case .died(let code, let message):
            // Dying before it was ready is a failed start: counted, so a broken setup ends in a clear
            // error after --max-start-failures instead of restarting forever.
            if engineReady { engineDied(code: code, message: message) } else { engineFailedToStart("[\(code.rawValue)] \(message)") }
        }
    }

    /// The engine is gone: fail its batch back as retryable and restart it with backoff.
    func engineDied(code: FailureCode, message: String) {
        restarts += 1
        logger.error("engine died", metadata: ["code": "\(code.rawValue)", "reason": "\(message)", "restarts": "\(restarts)"])
        engine.stop()
        failRunning(code, message)
        scheduleRestart()
    }

    /// Removes a batch from the engine's set; false if it was not there (a stale event).
    func take(_ id: String, _ attempt: UInt32) -> Bool {
        guard let index = running.firstIndex(where: { $0.batchID == id && $0.attempt == attempt }) else { return false }
        running.remove(at: index)
        lastProgress = now
        return true
    }

    /// Fails every batch inside the engine back to the broker as retryable (the engine is gone).
    func failRunning(_ code: FailureCode, _ message: String) {
        for job in running {
            send(.failed(batchID: job.batchID, attempt: job.attempt, code: code.rawValue, retryable: true,
                         message: message, partial: Frame(bytes: [UInt8]())))
        }
        running.removeAll()
    }

    /// Feeds the engine while it has room.
    func startNext() {
        while engineReady, running.count < engineCapacity, drainingSince == nil, let job = queue.popFirst() {
            if running.isEmpty { lastProgress = now }
            running.append(job)
            engine.submit(job)
        }
    }

    /// Gives the running batches back to the broker (drain timeout or second signal).
    func handBackRunning() {
        for job in running {
            engine.cancel(batchID: job.batchID, attempt: job.attempt)
            send(.failed(batchID: job.batchID, attempt: job.attempt, code: FailureCode.handedBack.rawValue, retryable: true,
                         message: "worker \(identity) stopped before finishing", partial: Frame(bytes: [UInt8]())))
        }
        running.removeAll()
    }
}
