import CompassEngines
import CompassProtocol
import CompassSystem // UInt64.since
import DequeModule

/// Every decision of a worker, as a pure state machine: events and the time (milliseconds of a
/// monotonic clock) go in, `WorkerAction`s come out. Nothing here touches a socket, a thread or a
/// clock, so all of it is unit-tested (Tests/CompassWorkerTests); `Worker` is the socket loop.
///
/// What it decides:
/// - **Registration**: connect once the engine is ready, READY, WELCOME, heartbeats, the broker's
///   liveness, reconnects with backoff, DISCONNECT.
/// - **Admission** (`+Admission`): which held batches go into the engine. An engine that declares
///   a sequence capacity gets batches, however many, while the requests inside it stay below
///   capacity plus a small queue: a batch is a unit of delivery, not of admission. Otherwise at
///   most `maxBatches` batches, as before.
/// - **Credit** (`+Admission`): how many more batches to ask the broker for, so that held plus
///   running requests stay near capacity plus a read-ahead, with the credit mode the broker
///   confirmed (explicit: every slot is granted with CREDIT, so the window can shrink).
/// - **Engine life** (`+Engine`): starts, the startup deadline, death, the progress watchdog,
///   restarts with backoff, giving up after too many failed starts.
/// - **Cancel, drain and hand-back**.
///
/// Invariants (`checkInvariants`, checked after every step in tests): the request counters equal
/// the sums they cache; a batch is held or running, never both, never twice; nothing is held while
/// disconnected or draining; nothing runs while the engine is not ready; no held batch waits while
/// the engine has room for it; outstanding credit stays within 0…`WireProtocol.maxCredit`; once a
/// step is over, a registered worker has asked for all the credit it wants.
public struct WorkerStateMachine {
    public let options: WorkerOptions

    /// A batch inside the engine.
    public struct RunningBatch: Sendable, Equatable {
        public var batchID: String
        public var attempt: UInt32
        /// Its requests (the engine's `total` once it reports one).
        public var requests: Int
        /// Requests the engine reported done.
        public var done = 0
        var remaining: Int { requests - done }
    }

    public enum EngineState: Sendable, Equatable {
        /// Not started yet.
        case idle
        case starting(since: UInt64)
        case ready
        /// Dead or failed to start; started again at `at`.
        case waitingToRestart(at: UInt64)
    }

    // Connection
    /// A connection exists and READY was sent on it.
    public internal(set) var connected = false
    /// The broker's WELCOME arrived on this connection.
    public internal(set) var registered = false
    var lastHeard: UInt64 = 0
    var lastSent: UInt64 = 0
    public internal(set) var heartbeatMilliseconds: UInt64
    public internal(set) var liveness: UInt64
    var reconnectDelay: UInt64
    var connectAt: UInt64?

    // Credit
    /// The mode the broker confirmed in WELCOME; nil between READY and WELCOME.
    public internal(set) var creditMode: CreditMode?
    /// Batches the broker may still send us, as we count them: READY's credit, plus CREDITs, minus
    /// BATCHes received, plus (implicit mode) one per RESULT or FAILED.
    public internal(set) var outstanding = 0
    /// RESULTs and FAILEDs sent since READY, before WELCOME said whether they return credit.
    var answeredSinceReady = 0
    /// When the READY that awaits its WELCOME was sent.
    var readySentAt: UInt64?
    /// Requests per batch expected from the broker: a moving average of those received.
    public internal(set) var batchSizeEstimate = 1.0
    var estimateObserved = false

    // Work
    /// Batches received and not yet in the engine, oldest first.
    public internal(set) var held: Deque<EngineJob> = []
    /// Batches inside the engine, oldest first.
    public internal(set) var running: [RunningBatch] = []
    /// Requests of the held batches, and requests inside the engine not reported done.
    public internal(set) var heldRequests = 0
    public internal(set) var inEngineRequests = 0
    /// Forward progress of the engine: the last progress, result or failure while it had work.
    var lastProgress: UInt64 = 0
    var lastProgressSent: UInt64 = 0
    public internal(set) var completed = 0

    // Engine
    public internal(set) var engine = EngineState.idle
    public internal(set) var capacity = EngineCapacity()
    var restartDelay: UInt64
    public internal(set) var startFailures = 0
    public internal(set) var restarts = 0
    /// The engine's latest step counts, and those last reported.
    public internal(set) var stepStats: EngineStepStats?
    var reportedStepStats: EngineStepStats?
    var lastStatsReport: UInt64 = 0

    // Shutdown
    public internal(set) var drainingSince: UInt64?
    /// Set when the worker is done: the I/O layer stops and exits with it.
    public internal(set) var exitCode: Int32?

    var out: [WorkerAction] = []

    /// How often PROGRESS goes to the broker at most (the engine may report every step).
    static let progressIntervalMilliseconds: UInt64 = 200

    public init(options: WorkerOptions) {
        self.options = options
        heartbeatMilliseconds = options.heartbeatMilliseconds
        liveness = options.liveness
        reconnectDelay = options.reconnectMinMilliseconds
        restartDelay = options.restartMinMilliseconds
    }

    /// Collects the actions emitted by `body`.
    mutating func collect(_ body: (inout WorkerStateMachine) -> Void) -> [WorkerAction] {
        body(&self)
        let actions = out
        out.removeAll(keepingCapacity: true)
        return actions
    }

    mutating func emit(_ action: WorkerAction) { out.append(action) }
    mutating func note(_ event: WorkerEvent) { out.append(.event(event)) }

    /// Sends to the broker; nothing goes out without a connection (the broker requeues what we held).
    mutating func send(_ message: ToBroker, _ now: UInt64) {
        guard connected else { return }
        lastSent = now
        emit(.send(message))
    }

    /// Sends a batch's RESULT or FAILED and counts the credit it may return.
    mutating func answer(_ message: ToBroker, _ now: UInt64) {
        guard connected else { return }
        send(message, now)
        switch creditMode {
        case nil: answeredSinceReady += 1
        case .implicit?: outstanding = min(outstanding + 1, WireProtocol.maxCredit)
        case .explicit?: break
        }
    }

    // MARK: Start, signals, ticks

    /// The worker's first step: start the engine (it connects once the engine is ready).
    public mutating func start(now: UInt64) -> [WorkerAction] {
        collect { m in m.startEngine(now) }
    }

    /// SIGTERM or SIGINT: drain (BYE, hand back what is held, finish what runs); a second one
    /// hands back what runs too and ends the worker.
    public mutating func signal(_ name: String, now: UInt64) -> [WorkerAction] {
        collect { m in
            if m.drainingSince != nil {
                m.note(.secondSignal(name))
                m.handBackRunning(now)
                m.exitCode = 0
                return
            }
            m.drainingSince = now
            m.note(.draining(signal: name, running: m.running.map(\.batchID), held: m.held.count))
            m.send(.bye(reason: name), now)
            while let job = m.held.popFirst() {
                m.heldRequests -= Self.requests(job)
                m.answer(.failed(batchID: job.batchID, attempt: job.attempt, code: .handedBack, retryable: true,
                                 message: "worker is draining"), now)
            }
        }
    }

    /// The broker refused the connection's security handshake: retrying will not help.
    public mutating func handshakeRefused(_ reason: String) -> [WorkerAction] {
        collect { m in
            m.note(.handshakeRefused(reason))
            m.exitCode = 4
        }
    }

    /// Timers: reconnect, heartbeats, the broker's liveness, the engine's startup deadline and
    /// restart, the progress watchdog, the end of a drain, the occupancy report.
    public mutating func tick(now: UInt64) -> [WorkerAction] {
        collect { m in m.timers(now) }
    }

    mutating func timers(_ now: UInt64) {
        if let at = connectAt, now >= at, engine == .ready || !running.isEmpty, drainingSince == nil { connect(now) }
        if connected {
            if now.since(lastSent) >= heartbeatMilliseconds { send(.heartbeat, now) }
            if now.since(lastHeard) > heartbeatMilliseconds * liveness {
                lostBroker("no message from the broker for \(now.since(lastHeard)) ms", now)
            } else if creditMode == nil, let sent = readySentAt, now.since(sent) > heartbeatMilliseconds * liveness {
                note(.reregistering(reason: "no WELCOME within \(now.since(sent)) ms of READY"))
                sendReady(now)
            }
        }
        engineTimers(now)
        if let since = drainingSince, exitCode == nil {
            if running.isEmpty {
                exitCode = 0
            } else if now.since(since) > options.drainMilliseconds {
                note(.drainTimeout)
                handBackRunning(now)
                exitCode = 0
            }
        }
        reportStatistics(now)
    }

    /// Logs the engine's occupancy once per interval, when its counts moved.
    mutating func reportStatistics(_ now: UInt64) {
        guard options.statsIntervalMilliseconds > 0, let stats = stepStats, stats != reportedStepStats,
              now.since(lastStatsReport) >= options.statsIntervalMilliseconds else { return }
        let occupancy = reportedStepStats.flatMap { stats.occupancy(since: $0) }
            ?? (stats.steps > 0 ? Double(stats.sequenceSteps) / Double(stats.steps * stats.capacity) : nil)
        note(.engineStatistics(stats, occupancy: occupancy, inEngine: inEngineRequests, held: heldRequests, completed: completed))
        reportedStepStats = stats
        lastStatsReport = now
    }

    static func requests(_ job: EngineJob) -> Int { max(1, Int(job.meta.requestCount)) }
}
