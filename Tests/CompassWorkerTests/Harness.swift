import CompassEngines
import CompassProtocol
import Testing
@testable import CompassWorker

/// Drives a `WorkerStateMachine` with a manual clock, records what it emits, and checks its
/// invariants after every step (as the scheduler's harness does).
struct Harness {
    var machine: WorkerStateMachine
    var now: UInt64 = 1_000
    var log: [WorkerAction] = []
    /// Whether the broker heartbeats: `advance` delivers its HEARTBEAT before the tick.
    var brokerAlive = true

    init(_ configure: (inout WorkerOptions) -> Void = { _ in }) {
        var options = WorkerOptions(broker: "tcp://broker", pool: "p")
        options.heartbeatMilliseconds = 100
        options.liveness = 3
        options.statsIntervalMilliseconds = 0
        configure(&options)
        machine = WorkerStateMachine(options: options)
    }

    @discardableResult
    mutating func step(_ body: (inout WorkerStateMachine, UInt64) -> [WorkerAction]) -> [WorkerAction] {
        let actions = body(&machine, now)
        log += actions
        let problems = machine.checkInvariants()
        #expect(problems.isEmpty, "invariants broken after \(actions): \(problems)")
        return actions
    }

    @discardableResult
    mutating func advance(_ ms: UInt64) -> [WorkerAction] {
        now += ms
        if brokerAlive { step { m, t in m.brokerHeartbeat(now: t) } }
        return step { m, t in m.tick(now: t) }
    }

    /// Starts the engine and makes it ready; returns the actions of the ready.
    @discardableResult
    mutating func startReady(_ capacity: EngineCapacity = EngineCapacity()) -> [WorkerAction] {
        step { m, t in m.start(now: t) }
        return ready(capacity)
    }

    @discardableResult
    mutating func ready(_ capacity: EngineCapacity = EngineCapacity()) -> [WorkerAction] {
        step { m, t in m.engineReady(detail: "test", capacity: capacity, now: t) }
    }

    @discardableResult
    mutating func welcome(_ mode: CreditMode? = .explicit) -> [WorkerAction] {
        step { m, t in m.welcome(heartbeatMilliseconds: 100, liveness: 3, creditMode: mode, now: t) }
    }

    @discardableResult
    mutating func batch(_ id: String, requests: UInt32 = 1, attempt: UInt32 = 1) -> [WorkerAction] {
        step { m, t in m.batch(Self.job(id, requests: requests, attempt: attempt), now: t) }
    }

    @discardableResult
    mutating func finish(_ id: String, attempt: UInt32 = 1, engine: EngineStepStats? = nil) -> [WorkerAction] {
        let stats = ResultStats(requests: 1, failedRequests: 0, promptTokens: 1, completionTokens: 1, engineMilliseconds: 1, worker: "w",
                                engine: engine)
        return step { m, t in m.engineFinished(batchID: id, attempt: attempt, payload: Array(id.utf8), stats: stats, now: t) }
    }

    @discardableResult
    mutating func progress(_ id: String, done: UInt32, total: UInt32, attempt: UInt32 = 1) -> [WorkerAction] {
        step { m, t in m.engineProgress(batchID: id, attempt: attempt, done: done, total: total, now: t) }
    }

    static func job(_ id: String, requests: UInt32 = 1, attempt: UInt32 = 1) -> EngineJob {
        EngineJob(batchID: id, attempt: attempt, meta: BatchMeta(requestCount: requests), payload: Array("[]".utf8))
    }
}

/// Pattern helpers over actions.
extension Array where Element == WorkerAction {
    var sent: [ToBroker] { compactMap { if case .send(let m) = $0 { return m }; return nil } }

    /// Ids of the batches handed to the engine.
    var submitted: [String] { compactMap { if case .submit(let job) = $0 { return job.batchID }; return nil } }

    /// CREDIT grants, in order.
    var credits: [Int] { sent.compactMap { if case .credit(let n) = $0 { return n }; return nil } }

    /// The credit of each READY.
    var readies: [Int] { sent.compactMap { if case .ready(let n, _) = $0 { return n }; return nil } }

    var results: [String] { sent.compactMap { if case .result(let id, _, _, _) = $0 { return id }; return nil } }

    var failures: [(id: String, code: FailureCode, retryable: Bool)] {
        sent.compactMap { if case .failed(let id, _, let code, let retryable, _) = $0 { return (id, code, retryable) }; return nil }
    }

    var cancels: [String] { compactMap { if case .cancel(let id, _) = $0 { return id }; return nil } }

    var events: [WorkerEvent] { compactMap { if case .event(let e) = $0 { return e }; return nil } }

    var connects: Int { filter { if case .connect = $0 { return true }; return false }.count }
    var disconnects: Int { filter { if case .disconnect = $0 { return true }; return false }.count }
    var engineStarts: Int { filter { if case .startEngine = $0 { return true }; return false }.count }
    var engineStops: Int { filter { if case .stopEngine = $0 { return true }; return false }.count }
    var heartbeats: Int { sent.filter { $0 == .heartbeat }.count }
    var byes: Int { sent.filter { if case .bye = $0 { return true }; return false }.count }
}
