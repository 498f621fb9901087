import CompassEngines
import CompassProtocol
import CompassSystem

extension WorkerStateMachine {
    mutating func startEngine(_ now: UInt64) {
        engine = .starting(since: now)
        note(.engineStarting)
        emit(.startEngine)
    }

    /// The engine is loaded: connect (the first time) or take work again.
    public mutating func engineReady(detail: String, capacity: EngineCapacity, now: UInt64) -> [WorkerAction] {
        collect { m in
            guard case .starting(let since) = m.engine else { return }
            m.engine = .ready
            m.capacity = capacity
            if !m.estimateObserved { m.batchSizeEstimate = Double(capacity.sequences ?? 1) }
            m.startFailures = 0
            m.restartDelay = m.options.restartMinMilliseconds
            m.note(.engineReady(detail: detail, capacity: capacity, startupMilliseconds: now.since(since)))
            if !m.connected && m.connectAt == nil && m.drainingSince == nil {
                m.connect(now)
            }
            m.settle(now)
        }
    }

    /// The engine could not be started at all (the spawn failed).
    public mutating func engineStartFailed(reason: String, now: UInt64) -> [WorkerAction] {
        collect { m in m.failedToStart(reason, now) }
    }

    /// Requests of a running batch done so far: forward progress, and slots freed in the engine.
    public mutating func engineProgress(batchID: String, attempt: UInt32, done: UInt32, total: UInt32, now: UInt64) -> [WorkerAction] {
        collect { m in
            guard let index = m.running.firstIndex(where: { $0.batchID == batchID && $0.attempt == attempt }) else { return }
            m.lastProgress = now
            let before = m.running[index].remaining
            if total > 0 { m.running[index].requests = Int(total) }
            m.running[index].done = min(max(m.running[index].done, Int(done)), m.running[index].requests)
            m.inEngineRequests += m.running[index].remaining - before
            if now.since(m.lastProgressSent) >= Self.progressIntervalMilliseconds {
                m.lastProgressSent = now
                m.send(.progress(batchID: batchID, attempt: attempt, done: done, total: total), now)
            }
            m.settle(now)
        }
    }

    /// A batch finished: RESULT, and its slots go to the next requests.
    public mutating func engineFinished(batchID: String, attempt: UInt32, payload: [UInt8], stats: ResultStats, now: UInt64) -> [WorkerAction] {
        collect { m in
            guard m.take(batchID, attempt, now) else { return }
            m.completed += 1
            if let engine = stats.engine { m.stepStats = engine }
            m.answer(.result(batchID: batchID, attempt: attempt, payload: payload, stats: stats), now)
            m.settle(now)
        }
    }

    /// A batch failed as a whole; the engine is still usable.
    public mutating func engineFailed(batchID: String, attempt: UInt32, code: FailureCode, retryable: Bool, message: String,
                                      now: UInt64) -> [WorkerAction] {
        collect { m in
            guard m.take(batchID, attempt, now) else { return }
            m.note(.batchFailed(batchID: batchID, code: code, message: message))
            m.answer(.failed(batchID: batchID, attempt: attempt, code: code, retryable: retryable, message: message), now)
            m.settle(now)
        }
    }

    /// The engine is gone. Dying before it was ready is a failed start: counted, so a broken setup
    /// ends in a clear error after `maxStartFailures` instead of restarting forever.
    public mutating func engineDied(code: FailureCode, message: String, now: UInt64) -> [WorkerAction] {
        collect { m in
            switch m.engine {
            case .ready: m.died(code, message, now)
            case .starting: m.failedToStart("[\(code.rawValue)] \(message)", now)
            case .idle, .waitingToRestart: break // stopped already: a late word from the old generation
            }
        }
    }

    /// The startup deadline, the restart timer and the progress watchdog.
    mutating func engineTimers(_ now: UInt64) {
        switch engine {
        case .starting(let since) where now.since(since) > options.startupTimeoutMilliseconds:
            failedToStart("the engine was not ready within \(options.startupTimeoutMilliseconds) ms", now)
        case .waitingToRestart(let at) where now >= at:
            startEngine(now)
        case .ready:
            if let first = running.first, options.progressTimeoutMilliseconds > 0,
               now.since(lastProgress) > options.progressTimeoutMilliseconds {
                note(.watchdog(batchID: first.batchID, stalledMilliseconds: now.since(lastProgress)))
                died(.timeout, "no progress for \(options.progressTimeoutMilliseconds) ms (watchdog)", now)
            }
        default:
            break
        }
    }

    /// The engine is gone: fail its batches back as retryable and restart it with backoff. Held
    /// batches stay: they go in once the engine is back.
    mutating func died(_ code: FailureCode, _ message: String, _ now: UInt64) {
        restarts += 1
        note(.engineDied(code: code, message: message, restarts: restarts))
        emit(.stopEngine)
        failRunning(code, message, now)
        scheduleRestart(now)
    }

    /// A start failed or timed out: retry with backoff, or give up after too many in a row.
    mutating func failedToStart(_ reason: String, _ now: UInt64) {
        emit(.stopEngine)
        startFailures += 1
        if startFailures >= options.maxStartFailures {
            note(.engineGaveUp(failures: startFailures, lastError: reason))
            engine = .idle
            exitCode = 3
            return
        }
        note(.engineStartFailed(reason: reason, attempt: startFailures, retryInMilliseconds: restartDelay))
        failRunning(.startupFailed, reason, now)
        scheduleRestart(now)
    }

    mutating func scheduleRestart(_ now: UInt64) {
        engine = .waitingToRestart(at: now + restartDelay)
        restartDelay = min(restartDelay * 2, options.restartMaxMilliseconds)
    }

    /// Removes a batch from the engine's set; false if it was not there (a stale event).
    mutating func take(_ batchID: String, _ attempt: UInt32, _ now: UInt64) -> Bool {
        guard let index = running.firstIndex(where: { $0.batchID == batchID && $0.attempt == attempt }) else { return false }
        inEngineRequests -= running.remove(at: index).remaining
        lastProgress = now
        return true
    }

    /// Fails every batch inside the engine back to the broker as retryable (the engine is gone).
    mutating func failRunning(_ code: FailureCode, _ message: String, _ now: UInt64) {
        let batches = running
        running.removeAll()
        inEngineRequests = 0
        for b in batches {
            answer(.failed(batchID: b.batchID, attempt: b.attempt, code: code, retryable: true, message: message), now)
        }
    }

    /// Gives the running batches back to the broker (drain timeout or second signal).
    mutating func handBackRunning(_ now: UInt64) {
        let batches = running
        running.removeAll()
        inEngineRequests = 0
        for b in batches {
            emit(.cancel(batchID: b.batchID, attempt: b.attempt))
            answer(.failed(batchID: b.batchID, attempt: b.attempt, code: .handedBack, retryable: true,
                           message: "the worker stopped before finishing"), now)
        }
    }
}
