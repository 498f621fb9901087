import CompassProtocol
import DequeModule

/// Where a batch is in its life.
enum BatchState<Payload: BatchPayload> {
    case queued
    case running(worker: PeerID, since: Timestamp, leaseUntil: Timestamp?)
    /// Split in halves after killing engines; waits for its children's results to merge them.
    case split(children: [String])
    /// Terminal; kept until the producer ACKs (or retention runs out) so it can be re-sent.
    case finished(Outcome<Payload>, at: Timestamp)
}

enum Outcome<Payload: BatchPayload> {
    case result(stats: Payload, payload: Payload)
    case failed(code: AnyFailureCode, message: String, partial: Payload?)

    /// Bytes the outcome holds (counted in `BatchRecord.heldBytes` once the batch finishes).
    var byteCount: Int {
        switch self {
        case .result(let stats, let result): stats.byteCount + result.byteCount
        case .failed(_, _, let partial): partial?.byteCount ?? 0
        }
    }
}

struct BatchRecord<Payload: BatchPayload> {
    let id: String
    let pool: String
    /// The producer session the outcome goes to (re-bound when an anonymous connection says HELLO).
    var session: SessionKey
    let meta: BatchMeta
    let maxAttempts: UInt16
    let payload: Payload
    let acceptedAt: Timestamp
    let deadline: Timestamp?
    var state: BatchState<Payload> = .queued
    /// Dispatches so far; the attempt number of the latest dispatch.
    var attempt: UInt32 = 0
    /// Dispatches counted against `maxAttempts` (hand-backs from draining workers are not).
    var charged: UInt32 = 0
    /// Failures with a kill code (engine died, worker lost, hang, OOM) so far.
    var kills: UInt32 = 0
    /// For a half made by poison isolation: the batch it was cut from, and which half it is.
    /// Halves are internal: the producer only ever hears of the batch it submitted.
    var half: SplitHalf?
    var parent: String? { half?.parent }
    var depth = 0
    /// Results of finished halves, by half index, until all are in (a failed half has no stats).
    var childResults: [Int: (stats: [UInt8]?, payload: [UInt8])] = [:]
    /// Dispatches of this batch and every half cut from it (on the original batch only).
    var totalDispatches: UInt32 = 0

    var isQueued: Bool { if case .queued = state { true } else { false } }
    var isSplit: Bool { if case .split = state { true } else { false } }
    var isFinished: Bool { if case .finished = state { true } else { false } }
    /// Whether this attempt of the batch is the one running on `worker`.
    func isRunning(attempt: UInt32, on worker: PeerID) -> Bool {
        guard self.attempt == attempt, case .running(let w, _, _) = state else { return false }
        return w == worker
    }

    /// Bytes this batch holds in the broker: its payload, plus its result once finished.
    var heldBytes: Int {
        var n = payload.byteCount
        if case .finished(let outcome, _) = state { n += outcome.byteCount }
        return n
    }
}

struct WorkerRecord {
    let id: PeerID
    let pool: String
    let registeredAt: Timestamp
    var credit: Int
    /// `.explicit`: RESULT and FAILED return no credit; the worker grants every slot with CREDIT.
    var creditMode: CreditMode = .implicit
    /// The slots (in `Scheduler.batches`) of the batches running on it: at most its credit, so
    /// a list searched from the end costs less than hashing an id into a set and out again.
    var running: [Int] = []
    var lastSeen: Timestamp
    var lastSent: Timestamp
    /// Said BYE: no new batches; removed once `running` is empty or the drain time passes.
    var drainingSince: Timestamp?
    /// In the pool's ring of workers with credit.
    var inRing = false
    /// Distinguishes this registration from an earlier one with the same id in the ready ring.
    let generation: UInt64
    var completed = 0
    var progress: [String: (done: UInt32, total: UInt32)] = [:]
    /// Dispatches to this worker it has not answered yet, running or taken back (cancelled, lease
    /// expired): each answer to one of them returns one credit, any other answer none.
    var owed: Set<Dispatch> = []
    /// The worker process beyond this connection (host and pid from READY; empty if unknown).
    let process: String
    /// The worker's identity for placement by affinity key (`AffinityPlacement.seed` of `process`).
    var placementSeed: UInt64 = 0
}

/// One dispatch of a batch: the pair a worker's RESULT or FAILED names.
struct Dispatch: Hashable {
    let batchID: String
    let attempt: UInt32
}

struct SessionRecord {
    /// The connection results go to; nil while the producer is away.
    var route: PeerID?
    /// Batches of this session the broker still holds (queued, running, or finished and unacked),
    /// by slot in `Scheduler.batches` (an integer hashes and rehashes for much less than an id).
    var batches: Set<Int> = []
    /// The last HELLO, ACK or HEARTBEAT of the session's connection: a session that holds no
    /// batches and stays silent longer than `SchedulerConfig.idleSessionMilliseconds` is forgotten.
    var lastSeen = Timestamp(nanoseconds: 0)
    /// Bytes the session's batches hold (`BatchRecord.heldBytes` of each batch it submitted:
    /// payload, and result once finished), checked against `SchedulerConfig.sessionByteLimit`.
    var heldBytes = 0
}

/// Counters per pool, for STATUS and metrics.
public struct PoolCounters: Sendable, Equatable, Codable {
    public var submitted = 0
    public var dispatched = 0
    public var completed = 0
    public var failed = 0
    public var retried = 0
    public var staleDropped = 0
    public var rejectedBusy = 0
    public var completedRequests = 0
    /// Batches with an affinity key dispatched to the worker the key ranks highest of those that
    /// could take one; and those no such worker could take (the ready ring's next worker did).
    public var affinityPlaced = 0
    public var affinityFallback = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case submitted, dispatched, completed, failed, retried, staleDropped = "stale_dropped"
        case rejectedBusy = "rejected_busy", completedRequests = "completed_requests"
        case affinityPlaced = "affinity_placed", affinityFallback = "affinity_fallback"
    }

    /// Decodes STATUS of this broker or an older one (which has no affinity counters).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func count(_ key: CodingKeys) throws -> Int { try c.decodeIfPresent(Int.self, forKey: key) ?? 0 }
        submitted = try count(.submitted)
        dispatched = try count(.dispatched)
        completed = try count(.completed)
        failed = try count(.failed)
        retried = try count(.retried)
        staleDropped = try count(.staleDropped)
        rejectedBusy = try count(.rejectedBusy)
        completedRequests = try count(.completedRequests)
        affinityPlaced = try count(.affinityPlaced)
        affinityFallback = try count(.affinityFallback)
    }
}

struct PoolState {
    var queue = PoolQueue<BatchRef>()
    /// Workers with credit, in dispatch order (lazy: entries are re-checked when popped).
    var ready: Deque<(worker: PeerID, generation: UInt64)> = []
    var workers: Set<PeerID> = []
    var queuedBatches = 0
    var queuedRequests = 0
    var runningBatches = 0
    var heldBytes = 0
    var counters = PoolCounters()
}
