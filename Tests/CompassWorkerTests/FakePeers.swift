import CompassEngines
import CompassProtocol
import DequeModule
@testable import CompassWorker

/// A broker as the worker sees it, reduced to what the scheduler does with one worker: a queue,
/// credit in either mode, attempts, requeue of what a forgotten worker held, DISCONNECT to a
/// worker it does not know. Messages travel in order both ways, and take their time.
struct FakeBroker {
    enum ToWorker {
        case welcome(CreditMode?)
        case batch(EngineJob)
        case cancel(String, UInt32)
        case heartbeat
        case disconnect
    }

    /// Whether this broker honours explicit credit (false: a broker that predates it).
    let supportsExplicit: Bool
    var known = false
    /// Increments with each READY taken: messages carry the registration they were sent under.
    var epoch = 0
    var credit = 0
    var mode = CreditMode.implicit
    var draining = false
    var queue: Deque<(id: String, requests: UInt32)> = []
    var attempts: [String: UInt32] = [:]
    /// Batches at the worker: id → current attempt.
    var atWorker: [String: UInt32] = [:]
    var outcomes: [String: Int] = [:]
    var inbound: Deque<ToBroker> = []
    var outbound: Deque<(epoch: Int, message: ToWorker)> = []

    init(supportsExplicit: Bool, batches: [(String, UInt32)]) {
        self.supportsExplicit = supportsExplicit
        queue = Deque(batches.map { (id: $0.0, requests: $0.1) })
    }

    var readiesInFlight: Int { inbound.filter { if case .ready = $0 { return true }; return false }.count }

    /// The worker's connection is gone (it made a new one, or dropped it): what it held goes back.
    mutating func connectionClosed() {
        inbound.removeAll()
        outbound.removeAll()
        forget()
    }

    /// The broker forgets the worker (declared dead, or restarted without a journal).
    mutating func forget() {
        known = false
        credit = 0
        for id in atWorker.keys.sorted().reversed() { queue.prepend((id, requests(id))) }
        atWorker.removeAll()
    }

    var sizes: [String: UInt32] = [:]
    func requests(_ id: String) -> UInt32 { sizes[id] ?? 1 }

    mutating func receiveOne() {
        guard let message = inbound.popFirst() else { return }
        if case .ready(let granted, _) = message {
            if known { forget() }
            known = true
            epoch += 1
            credit = min(granted, WireProtocol.maxCredit)
            mode = supportsExplicit ? .explicit : .implicit
            draining = false
            outbound.append((epoch, .welcome(supportsExplicit ? .explicit : nil)))
            return
        }
        guard known else {
            outbound.append((epoch, .disconnect))
            return
        }
        switch message {
        case .credit(let n):
            credit = min(credit + n, WireProtocol.maxCredit)
        case .result(let id, let attempt, _, _):
            if mode == .implicit { credit = min(credit + 1, WireProtocol.maxCredit) }
            if atWorker[id] == attempt {
                atWorker[id] = nil
                outcomes[id, default: 0] += 1
            }
        case .failed(let id, let attempt, let code, _, _):
            if mode == .implicit { credit = min(credit + 1, WireProtocol.maxCredit) }
            if atWorker[id] == attempt {
                atWorker[id] = nil
                if code == .cancelled { outcomes[id, default: 0] += 1 } else { queue.prepend((id, requests(id))) }
            }
        case .bye:
            draining = true
        case .ready, .heartbeat, .progress:
            break
        }
    }

    /// Sends the next queued batch if the worker has credit.
    mutating func dispatch() -> Bool {
        guard known, !draining, credit > 0, let next = queue.popFirst() else { return false }
        credit -= 1
        let attempt = attempts[next.id, default: 0] + 1
        attempts[next.id] = attempt
        atWorker[next.id] = attempt
        outbound.append((epoch, .batch(EngineJob(batchID: next.id, attempt: attempt, meta: BatchMeta(requestCount: next.requests),
                                                 payload: []))))
        return true
    }

    /// A CANCEL of a batch the worker holds.
    mutating func cancelOne(_ pick: Int) {
        guard !atWorker.isEmpty else { return }
        let ids = atWorker.keys.sorted()
        let id = ids[pick % ids.count]
        outbound.append((epoch, .cancel(id, atWorker[id]!)))
    }
}

/// An engine as the worker sees it: jobs it was given, answered when the test says.
struct FakeEngine {
    enum State { case down, starting, ready }
    struct Job {
        var id: String
        var attempt: UInt32
        var requests: Int
        var done = 0
    }

    var state = State.down
    var jobs: [Job] = []
    var cancelRequested: Set<String> = []

    mutating func apply(_ action: WorkerAction) {
        switch action {
        case .startEngine:
            state = .starting
            jobs.removeAll()
        case .stopEngine:
            state = .down
            jobs.removeAll()
        case .submit(let job):
            jobs.append(Job(id: job.batchID, attempt: job.attempt, requests: max(1, Int(job.meta.requestCount))))
        case .cancel(let id, let attempt):
            cancelRequested.insert("\(id)#\(attempt)")
        default:
            break
        }
    }
}
