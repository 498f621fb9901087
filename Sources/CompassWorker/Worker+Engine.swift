import CompassEngines
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
        if let job = running {
            send(.failed(batchID: job.batchID, attempt: job.attempt, code: FailureCode.startupFailed.rawValue, retryable: true,
                         message: reason, partial: Frame(bytes: [UInt8]())))
            running = nil
        }
        scheduleRestart()
    }

    func scheduleRestart() {
        engineReady = false
        restartAt = now + restartDelay
        restartDelay = min(restartDelay * 2, options.restartMaxMilliseconds)
    }

    func handleEngine(_ event: EngineEvent) {
        switch event {
        case .ready(let detail):
            engineReady = true
            startFailures = 0
            restartDelay = options.restartMinMilliseconds
            logger.info("engine ready", metadata: ["detail": "\(detail)", "startup_ms": "\(now - engineStartedAt)"])
            if socket == nil && connectAt == nil && drainingSince == nil { try? connect() }
            startNext()
        case .progress(let id, let attempt, let done, let total):
            guard let job = running, job.batchID == id, job.attempt == attempt else { return }
            lastProgress = now
            if now - lastProgressSent >= 200 {
                lastProgressSent = now
                send(.progress(batchID: id, attempt: attempt, done: done, total: total))
            }
        case .finished(let id, let attempt, let payload, let stats):
            guard let job = running, job.batchID == id, job.attempt == attempt else { return }
            running = nil
            completed += 1
            let statsFrame = Frame(bytes: (try? JSONEncoder().encode(stats)) ?? Data("{}".utf8))
            send(.result(batchID: id, attempt: attempt, stats: statsFrame, payload: Frame(bytes: payload)))
            startNext()
        case .failed(let id, let attempt, let code, let retryable, let message):
            guard let job = running, job.batchID == id, job.attempt == attempt else { return }
            running = nil
            logger.warning("batch failed in the engine", metadata: ["batch": "\(id)", "code": "\(code.rawValue)", "reason": "\(message)"])
            send(.failed(batchID: id, attempt: attempt, code: code.rawValue, retryable: retryable, message: message, partial: Frame(bytes: [UInt8]())))
            startNext()
        case .died(let code, let message):
            engineDied(code: code, message: message)
        }
    }

    /// The engine is gone: fail its batch back as retryable and restart it with backoff.
    func engineDied(code: FailureCode, message: String) {
        restarts += 1
        logger.error("engine died", metadata: ["code": "\(code.rawValue)", "reason": "\(message)", "restarts": "\(restarts)"])
        engine.stop()
        if let job = running {
            send(.failed(batchID: job.batchID, attempt: job.attempt, code: code.rawValue, retryable: true,
                         message: message, partial: Frame(bytes: [UInt8]())))
            running = nil
        }
        scheduleRestart()
    }

    /// Feeds the engine its next batch when it is idle.
    func startNext() {
        guard engineReady, running == nil, drainingSince == nil, let job = queue.popFirst() else { return }
        running = job
        runningSince = now
        lastProgress = now
        engine.submit(job)
    }

    /// Gives the running batch back to the broker (drain timeout or second signal).
    func handBackRunning() {
        guard let job = running else { return }
        engine.cancel(batchID: job.batchID, attempt: job.attempt)
        send(.failed(batchID: job.batchID, attempt: job.attempt, code: FailureCode.handedBack.rawValue, retryable: true,
                     message: "worker \(identity) stopped before finishing", partial: Frame(bytes: [UInt8]())))
        running = nil
    }
}
