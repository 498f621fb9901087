import CompassProtocol
@testable import CompassScheduler

/// Drives a scheduler with a manual clock and records what it emits.
struct Harness {
    var scheduler: Scheduler<[UInt8]>
    var now = Timestamp.milliseconds(1_000)
    var log: [SchedulerAction<[UInt8]>] = []

    /// `format`: what the scheduler knows of payloads; `ByteFormat` (a byte is a request) unless a
    /// test needs the protocol's JSON.
    init(format: any PayloadFormat = ByteFormat(), _ configure: (inout SchedulerConfig) -> Void = { _ in }) {
        var config = SchedulerConfig()
        config.declaredPools = ["p"]
        config.heartbeatMilliseconds = 100
        config.liveness = 3
        configure(&config)
        scheduler = Scheduler(config: config, format: format)
    }

    mutating func advance(_ ms: UInt64) -> [SchedulerAction<[UInt8]>] {
        now = now.adding(milliseconds: ms)
        return record(scheduler.tick(now: now))
    }

    @discardableResult
    mutating func record(_ actions: [SchedulerAction<[UInt8]>]) -> [SchedulerAction<[UInt8]>] {
        log += actions
        let problems = scheduler.checkInvariants() + scheduler.checkPlacementInvariants()
        precondition(problems.isEmpty, "invariants broken: \(problems)")
        return actions
    }

    @discardableResult
    mutating func submit(_ id: String, from producer: String = "prod", pool: String = "p", requests: UInt32 = 1,
                         priority: Int16 = 0, maxAttempts: UInt16 = 0, deadline: UInt32 = 0, bytes: Int = 10,
                         affinity: UInt64 = 0, fill: UInt8 = 1) -> [SchedulerAction<[UInt8]>] {
        let meta = BatchMeta(requestCount: requests, maxAttempts: maxAttempts, priority: priority, deadlineMilliseconds: deadline,
                             affinity: affinity)
        return record(scheduler.submit(from: PeerID(producer), batchID: id, pool: pool, meta: meta,
                                       payload: [UInt8](repeating: fill, count: bytes), now: now))
    }

    @discardableResult
    mutating func ack(_ id: String, from producer: String = "prod") -> [SchedulerAction<[UInt8]>] {
        record(scheduler.ack(from: PeerID(producer), batchID: id, now: now))
    }

    @discardableResult
    mutating func ready(_ worker: String, pool: String = "p", credit: Int = 1, creditMode: CreditMode = .implicit,
                        process: String? = nil) -> [SchedulerAction<[UInt8]>] {
        record(scheduler.workerReady(PeerID(worker), pool: pool, credit: credit, creditMode: creditMode, process: process ?? worker, now: now))
    }

    @discardableResult
    mutating func credit(_ worker: String, _ n: UInt32) -> [SchedulerAction<[UInt8]>] {
        record(scheduler.workerCredit(PeerID(worker), n, now: now))
    }

    @discardableResult
    mutating func result(_ worker: String, _ id: String, attempt: UInt32 = 1) -> [SchedulerAction<[UInt8]>] {
        record(scheduler.workerResult(PeerID(worker), batchID: id, attempt: attempt, stats: [0], payload: Array(id.utf8), now: now))
    }

    @discardableResult
    mutating func failed(_ worker: String, _ id: String, attempt: UInt32 = 1, code: FailureCode, retryable: Bool) -> [SchedulerAction<[UInt8]>] {
        record(scheduler.workerFailed(PeerID(worker), batchID: id, attempt: attempt, code: AnyFailureCode(code), retryable: retryable,
                                      message: "boom", partial: nil, now: now))
    }
}

/// Pattern helpers over actions.
extension Array where Element == SchedulerAction<[UInt8]> {
    /// (worker, batch id, attempt) of every BATCH sent.
    var dispatches: [(worker: String, id: String, attempt: UInt32)] {
        compactMap {
            if case .toWorker(let w, .batch(let id, let attempt, _, _)) = $0 { return (w.description, id, attempt) }
            return nil
        }
    }

    var accepted: [String] {
        compactMap { if case .toProducer(_, .accepted(let id)) = $0 { return id }; return nil }
    }

    var rejections: [(id: String, code: RejectCode, retryAfter: UInt32)] {
        compactMap {
            if case .toProducer(_, .rejected(let id, let code, _, let retry)) = $0 { return (id, code, retry) }
            return nil
        }
    }

    /// (producer route, batch id) of every RESULT.
    var results: [(route: String, id: String)] {
        compactMap { if case .toProducer(let r, .result(let id, _, _, _)) = $0 { return (r.description, id) }; return nil }
    }

    /// (batch id, code as sent) of every FAILED.
    var failures: [(id: String, code: String)] {
        compactMap { if case .toProducer(_, .failed(let id, _, let code, _, _)) = $0 { return (id, code.rawValue) }; return nil }
    }

    func sent(to worker: String) -> [WorkerOutput<[UInt8]>] {
        compactMap { if case .toWorker(let w, let m) = $0, w.description == worker { return m }; return nil }
    }

    var events: [SchedulerEvent] {
        compactMap { if case .event(let e) = $0 { return e }; return nil }
    }
}

/// Matches a code by its wire text in a pattern (`case .requeued(_, _, "engine_error", _)`).
func ~= (text: String, code: AnyFailureCode) -> Bool { code.rawValue == text }
