import CompassEngines
import CompassProtocol
import CompassSystem

extension WorkerStateMachine {
    // MARK: Connection

    /// Opens a connection and registers on it.
    mutating func connect(_ now: UInt64) {
        emit(.connect)
        connected = true
        registered = false
        lastHeard = now
        connectAt = nil
        note(.connecting)
        sendReady(now)
    }

    /// READY grants the credit both credit modes agree on (the batch window a worker always had):
    /// until WELCOME says the broker takes explicit credit, a larger grant could never be taken back.
    mutating func sendReady(_ now: UInt64) {
        creditMode = nil
        readySentAt = now
        answeredSinceReady = 0
        let credit = engine == .ready && drainingSince == nil ? max(0, min(batchWindow - running.count, WireProtocol.maxCredit)) : 0
        outstanding = credit
        send(.ready(credit: credit, capacity: capacity), now)
    }

    /// Drops the connection and plans a new one after the backoff delay. Batches not started are
    /// dropped (the broker requeues them); those running finish and report on the next connection.
    mutating func lostBroker(_ reason: String, _ now: UInt64) {
        note(.brokerLost(reason: reason, retryInMilliseconds: reconnectDelay))
        emit(.disconnect)
        connected = false
        registered = false
        creditMode = nil
        readySentAt = nil
        outstanding = 0
        dropHeld()
        connectAt = now + reconnectDelay
        reconnectDelay = min(reconnectDelay * 2, options.reconnectMaxMilliseconds)
    }

    mutating func dropHeld() {
        held.removeAll()
        heldRequests = 0
    }

    mutating func heard(_ now: UInt64) { lastHeard = now }

    // MARK: Messages from the broker

    /// WELCOME: registered. `creditMode` is what the broker said (nil: a broker that predates
    /// explicit credit, which returns a credit with every RESULT and FAILED).
    public mutating func welcome(heartbeatMilliseconds: UInt32?, liveness: UInt32?, creditMode: CreditMode?, now: UInt64) -> [WorkerAction] {
        collect { m in
            m.heard(now)
            if let hb = heartbeatMilliseconds { m.heartbeatMilliseconds = UInt64(max(10, hb)) }
            if let l = liveness { m.liveness = UInt64(max(1, l)) }
            let mode = creditMode ?? .implicit
            if m.creditMode == nil && mode == .implicit {
                // Each RESULT or FAILED sent after READY returned a credit at such a broker.
                m.outstanding = min(m.outstanding + m.answeredSinceReady, WireProtocol.maxCredit)
                if m.capacity.sequences != nil { m.note(.implicitCredit(window: m.batchWindow)) }
            }
            m.answeredSinceReady = 0
            m.creditMode = mode
            m.readySentAt = nil
            m.registered = true
            m.reconnectDelay = m.options.reconnectMinMilliseconds
            m.note(.registered(heartbeatMilliseconds: m.heartbeatMilliseconds, creditMode: mode))
            m.settle(now)
        }
    }

    /// BATCH: held until the engine has room for it (at once, usually).
    public mutating func batch(_ job: EngineJob, now: UInt64) -> [WorkerAction] {
        collect { m in
            m.heard(now)
            m.outstanding = max(0, m.outstanding - 1)
            if m.drainingSince != nil {
                m.answer(.failed(batchID: job.batchID, attempt: job.attempt, code: .handedBack, retryable: true,
                                 message: "worker is draining"), now)
                return
            }
            let requests = Self.requests(job)
            if m.estimateObserved {
                m.batchSizeEstimate += (Double(requests) - m.batchSizeEstimate) / 4
            } else {
                m.batchSizeEstimate = Double(requests)
                m.estimateObserved = true
            }
            m.held.append(job)
            m.heldRequests += requests
            m.settle(now)
        }
    }

    /// CANCEL: a held batch is answered `cancelled` at once; a running one is cancelled in the
    /// engine, which answers it.
    public mutating func cancel(batchID: String, attempt: UInt32, now: UInt64) -> [WorkerAction] {
        collect { m in
            m.heard(now)
            if let index = m.held.firstIndex(where: { $0.batchID == batchID && $0.attempt == attempt }) {
                m.heldRequests -= Self.requests(m.held.remove(at: index))
                m.answer(.failed(batchID: batchID, attempt: attempt, code: .cancelled, retryable: false,
                                 message: "cancelled before it started"), now)
                m.settle(now)
            } else if m.running.contains(where: { $0.batchID == batchID && $0.attempt == attempt }) {
                m.emit(.cancel(batchID: batchID, attempt: attempt))
            }
        }
    }

    /// HEARTBEAT (or any message): the broker is alive.
    public mutating func brokerHeartbeat(now: UInt64) -> [WorkerAction] {
        collect { m in m.heard(now) }
    }

    /// DISCONNECT: the broker does not know us (it restarted, or declared us dead): register again.
    /// Batches not started are the broker's to requeue; running ones still report.
    ///
    /// The broker answers *every* message of a worker it does not know with DISCONNECT, and a busy
    /// worker has hundreds on their way (results, credit). Only the first is news: once READY is
    /// sent, a DISCONNECT before its WELCOME answers a message sent before that READY (the broker
    /// reads a connection in order), so registering again for each would make the broker forget
    /// and requeue, once per echo, every batch it had sent meanwhile, and charge each an attempt.
    /// A READY that gets no WELCOME (the broker refused it) is sent again after the liveness time.
    public mutating func disconnected(reason: String, now: UInt64) -> [WorkerAction] {
        collect { m in
            m.heard(now)
            guard m.creditMode != nil else { return }
            m.note(.reregistering(reason: reason))
            m.dropHeld()
            m.registered = false
            m.sendReady(now)
        }
    }
}
