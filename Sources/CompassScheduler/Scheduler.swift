import CompassProtocol
import DequeModule
import HeapModule

/// The broker's scheduling core: pools, queues, workers, credits, attempts and timers, as a pure
/// state machine. Every input is a method taking `now`; every output is an action for the I/O layer
/// to carry out. Nothing here touches a socket, a clock or a file, so all of it is unit-tested.
///
/// Invariants (checked by `checkInvariants` in tests):
/// - a batch is in exactly one state; a running batch is in its worker's `running` list;
/// - a batch accepted is answered to its session exactly once with RESULT or FAILED, re-sent only
///   on the session's HELLO or re-SUBMIT until ACKed;
/// - a RESULT or FAILED whose attempt is not the batch's current running attempt changes nothing.
public struct Scheduler<Payload: BatchPayload> {
    public let config: SchedulerConfig
    /// What the scheduler may know of payloads: how to cut a batch in halves and join the halves'
    /// answers (poison isolation). It reads no payload itself.
    let format: any PayloadFormat
    var pools = PoolTable()
    /// The batches held, by slot (each id is looked up once per message that names it).
    var batches = BatchTable<Payload>()
    var workers: [PeerID: WorkerRecord] = [:]
    var sessions: [SessionKey: SessionRecord] = [:]
    var routeSessions: [PeerID: SessionKey] = [:]
    /// When `tick` last looked for idle sessions (once a second at most).
    var lastSessionSweep = Timestamp(nanoseconds: 0)
    /// The last `SchedulerConfig.rememberedAcks` ACKed batch ids, oldest first (an id is in it at
    /// most once: it cannot be submitted, so ACKed, again while it is remembered).
    var recentAcks: Deque<String> = []
    /// What a remembered ACKed batch was (its pool and a hash of its payload, not the payload), so
    /// that its re-SUBMIT is told `duplicate` or `payload_mismatch`.
    var recentAckSet: [String: AckedBatch] = [:]
    /// Finished batches in finishing order, for result retention.
    var finishedOrder: Deque<(id: String, at: Timestamp)> = []
    /// Deadlines of batches, soonest first (entries of finished batches are skipped when popped).
    var deadlines = Heap<DeadlineEntry>()
    var nextGeneration: UInt64 = 1
    /// After a restart: the latest attempt of each unfinished batch made by the previous broker.
    /// A late RESULT for one of those attempts is accepted once.
    var recoveredAttempts: [String: UInt32] = [:]
    /// Dispatches owed by workers that were removed (lost, drained, re-registered), with the
    /// process that owed each, bounded by `SchedulerConfig.maxOrphanedDispatches` (oldest go
    /// first): that process, reconnected under any id, gets its credit back when it answers one,
    /// as its READY expects.
    var orphaned: [Dispatch: String] = [:]
    var orphanedOrder: Deque<Dispatch> = []
    /// Unknown workers sent DISCONNECT since `disconnectWindowStart` (at most one each per
    /// heartbeat interval; the set is emptied when an interval has passed).
    var disconnectedRecently: Set<PeerID> = []
    var disconnectWindowStart = Timestamp(nanoseconds: 0)
    var out: [SchedulerAction<Payload>] = []
    public internal(set) var accepting = true

    public typealias Action = SchedulerAction<Payload>

    public init(config: SchedulerConfig, format: any PayloadFormat) {
        self.config = config
        self.format = format
        for pool in config.declaredPools where pools.index(forKey: pool) == nil { pools.add(pool) }
    }

    /// Collects the actions emitted by `body`, into the storage of the array last handed back
    /// with `recycle` when there is one (a new array of 8 otherwise).
    mutating func collect(_ body: (inout Scheduler) -> Void) -> [Action] {
        if out.capacity == 0 { out.reserveCapacity(8) }
        body(&self)
        let actions = out
        out = []
        return actions
    }

    /// Hands back an array of actions that has been carried out: emptied, its storage takes the
    /// next call's actions, which saves allocating (and freeing) an array per call. Optional;
    /// an array grown past 64 actions (a burst) is let go, so none stays large.
    public mutating func recycle(_ actions: inout [Action]) {
        guard out.isEmpty, out.capacity == 0, actions.capacity <= 64 else { return }
        // Popped one by one: cheaper than `removeAll(keepingCapacity:)` for a few actions (it goes
        // through the generic `replaceSubrange`).
        while actions.popLast() != nil {}
        swap(&out, &actions)
    }

    mutating func emit(_ action: Action) { out.append(action) }

    // The helpers below reach a record through its dictionary index and `values`, in place: one
    // lookup for several updates, and no copy. `dict[key]!.field += 1` and `dict[key]?.field`
    // move the record out of the dictionary and back through an optional (and a plain read of a
    // record copies it whole, retaining and releasing each of its fields), on every batch.

    /// Runs `body` on a pool's state in place.
    @inline(__always)
    mutating func withPool<R>(_ name: String, _ body: (inout PoolState) -> R) -> R { body(&pools.values[pools.index(forKey: name)!]) }

    /// The ids of the batches running on worker `w`, from its slots.
    func runningIDs(_ w: WorkerRecord) -> [String] { w.running.map { batches[slot: $0].id } }

    /// Runs `body` on a registered worker's record in place.
    @inline(__always)
    mutating func withWorker<R>(_ id: PeerID, _ body: (inout WorkerRecord) -> R) -> R { body(&workers.values[workers.index(forKey: id)!]) }

    /// Runs `body` on a batch's record in place.
    @inline(__always)
    mutating func withBatch<R>(_ id: String, _ body: (inout BatchRecord<Payload>) -> R) -> R { body(&batches[slot: batches.index(forKey: id)!]) }

    /// Runs `body` on the record of the batch in `slot` in place.
    @inline(__always)
    mutating func withBatch<R>(slot: Int, _ body: (inout BatchRecord<Payload>) -> R) -> R { body(&batches[slot: slot]) }

    /// Runs `body` on a session's record in place if the broker holds the session.
    @inline(__always) @discardableResult
    mutating func ifSession<R>(_ key: SessionKey, _ body: (inout SessionRecord) -> R) -> R? {
        guard let slot = sessions.index(forKey: key) else { return nil }
        return body(&sessions.values[slot])
    }

    /// Runs `body` on a worker's record in place if the worker is registered.
    @inline(__always) @discardableResult
    mutating func ifWorker<R>(_ id: PeerID, _ body: (inout WorkerRecord) -> R) -> R? {
        guard let slot = workers.index(forKey: id) else { return nil }
        return body(&workers.values[slot])
    }

    mutating func sendWorker(_ id: PeerID, _ message: WorkerOutput<Payload>, _ now: Timestamp) {
        ifWorker(id) { w in w.lastSent = now }
        emit(.toWorker(id, message))
    }

    // MARK: Queries

    /// Whether `pool` is declared or has had a worker.
    public func knowsPool(_ pool: String) -> Bool { pools[pool] != nil }

    /// Batches the broker holds in any state.
    public var batchCount: Int { batches.count }

    /// Workers registered.
    public var workerCount: Int { workers.count }

    /// Batches queued or running, in all pools.
    public var unfinishedCount: Int { pools.values.reduce(0) { $0 + $1.queuedBatches + $1.runningBatches } }

    // MARK: Shared transitions

    /// Adds a worker with credit to its pool's ready ring (once).
    mutating func offer(_ id: PeerID) {
        let entry: (pool: String, generation: UInt64)?? = ifWorker(id) { w in
            guard !w.inRing, w.credit > 0, w.drainingSince == nil else { return nil }
            w.inRing = true
            return (w.pool, w.generation)
        }
        guard let entry = entry ?? nil else { return }
        withPool(entry.pool) { p in p.ready.append((id, entry.generation)) }
    }

    /// A pool's position in `pools`. Pools are never removed, and none is added while batches are
    /// dispatched, so a position found at the start of `dispatch` holds until it returns.
    typealias PoolSlot = Int

    /// Pops the next worker of the pool at `slot` with credit, or nil.
    mutating func nextWorker(_ pool: PoolSlot) -> PeerID? {
        while let entry = pools.values[pool].ready.popFirst() {
            let ready = ifWorker(entry.worker) { w -> Bool in
                guard w.generation == entry.generation, w.inRing else { return false }
                if w.credit > 0 && w.drainingSince == nil { return true }
                w.inRing = false
                return false
            }
            if ready == true { return entry.worker }
        }
        return nil
    }

    /// Hands queued batches of `pool` to workers with credit, as long as both exist.
    mutating func dispatch(_ pool: String, _ now: Timestamp) {
        guard let slot = pools.index(forKey: pool) else { return }
        // `queuedBatches` through `withPool`-style access: `pools.values[slot].queuedBatches`
        // alone would copy the whole pool state (its queue and ring) to read one field.
        func queued(_ p: inout PoolState) -> Int { p.queuedBatches }
        while queued(&pools.values[slot]) > 0 {
            guard let wid = nextWorker(slot) else { return }
            // The queue is moved out while it is popped, so the closure can read `batches` without
            // overlapping access to `pools` and without copying either.
            var queue = PoolQueue<BatchRef>()
            swap(&queue, &pools.values[slot].queue)
            let next = queue.pop(isQueued: { isQueued($0) })
            swap(&queue, &pools.values[slot].queue)
            guard let batch = next?.slot else {
                // The counters said there is work but the queue holds none: put the worker back.
                workers[wid]!.inRing = false
                offer(wid)
                return
            }
            if let chosen = placeByAffinity(batch, pool: pool, popped: wid) {
                start(batch, on: chosen, now)
                workers[chosen]!.credit -= 1
                continue
            }
            start(batch, on: wid, now)
            let again: UInt64? = withWorker(wid) { w in
                w.credit -= 1
                if w.credit > 0 { return w.generation }
                w.inRing = false
                return nil
            }
            if let generation = again { pools.values[slot].ready.append((wid, generation)) }
        }
    }

    /// Whether a pool queue's entry names a queued batch: the batch it was pushed for, still held
    /// (its slot's generation) and still queued (read in place, as `withBatch` does).
    mutating func isQueued(_ ref: BatchRef) -> Bool {
        guard batches.holds(ref) else { return false }
        func read(_ b: inout BatchRecord<Payload>) -> Bool { b.isQueued }
        return read(&batches[slot: ref.slot])
    }

    /// Queues the batch in `slot` at the back of its pool's queue, or at the front (a retry).
    mutating func enqueue(_ slot: Int, pool: PoolSlot, session: SessionKey, priority: Int16, atFront: Bool = false) {
        let ref = batches.ref(slot)
        pools.values[pool].queue.push(ref, session: session, priority: priority, atFront: atFront)
    }

    /// Moves a queued batch to running on `worker` and emits the BATCH.
    mutating func start(_ slot: Int, on worker: PeerID, _ now: Timestamp) {
        let lease = config.leaseMilliseconds > 0 ? now.adding(milliseconds: config.leaseMilliseconds) : nil
        let (id, attempt, pool, isHalf, payload, deadline, maxAttempts, original) = withBatch(slot: slot) { b in
            b.attempt += 1
            b.charged += 1
            b.state = .running(worker: worker, since: now, leaseUntil: lease)
            if b.parent == nil { b.totalDispatches += 1 }
            return (b.id, b.attempt, b.pool, b.parent != nil, b.payload, b.deadline, b.maxAttempts, b.meta)
        }
        withPool(pool) { p in
            p.queuedBatches -= 1
            p.queuedRequests -= Int(original.requestCount)
            p.runningBatches += 1
            p.counters.dispatched += 1
        }
        withWorker(worker) { w in
            w.running.append(slot)
            w.owed.insert(Dispatch(batchID: id, attempt: attempt))
            w.lastSent = now
        }
        if isHalf { withBatch(root(of: id)) { $0.totalDispatches += 1 } }
        journalAttempt(id)
        var meta = original
        meta.maxAttempts = maxAttempts
        if let deadline {
            meta.deadlineMilliseconds = UInt32(clamping: max(1, deadline.milliseconds(since: now)))
        }
        emit(.toWorker(worker, .batch(batchID: id, attempt: attempt, meta: meta, payload: payload)))
    }

    /// Puts a batch back at the front of its queue.
    mutating func requeue(_ id: String) {
        let slot = batches.index(forKey: id)!
        let b = batches[slot: slot]
        batches[slot: slot].state = .queued
        let pool = pools.index(forKey: b.pool)!
        enqueue(slot, pool: pool, session: b.session, priority: b.meta.priority, atFront: true)
        withPool(b.pool) { p in
            p.queuedBatches += 1
            p.queuedRequests += Int(b.meta.requestCount)
        }
    }

    /// Takes a running batch off its worker (no state change of the batch itself).
    mutating func detach(_ id: String, slot: Int, from worker: PeerID, pool: String) {
        ifWorker(worker) { w in
            if let at = w.running.lastIndex(of: slot) { w.running.remove(at: at) }
            if !w.progress.isEmpty { w.progress[id] = nil }
        }
        withPool(pool) { p in p.runningBatches -= 1 }
    }

    /// A running batch's attempt failed: retry it, split it (it keeps killing engines), or finish it.
    mutating func attemptFailed(_ id: String, code: AnyFailureCode, message: String, retryable: Bool, partial: Payload?,
                                chargeAttempt: Bool, _ now: Timestamp) {
        guard let b = batches[id], case .running(let worker, _, _) = b.state else { return }
        if !chargeAttempt {
            // Not an attempt at all: neither counted against max_attempts nor reported as one.
            batches[id]!.charged -= 1
            batches[root(of: id)]!.totalDispatches -= 1
        }
        let killed = retryable && code.known.map(config.killCodes.contains) == true
        if killed { batches[id]!.kills += 1 }
        let kills = batches[id]!.kills
        let charged = batches[id]!.charged
        // Poison isolation: a batch that keeps killing engines is cut in halves rather than retried
        // whole; a half (already suspect) is cut again after one kill; a single request that still
        // kills is reported failed alone.
        if killed && b.meta.requestCount >= 2 && kills >= (b.parent == nil ? config.splitAfterKills : 1)
            && b.depth < config.maxSplitDepth, !halfIDsTaken(id), let halves = format.halves(b.payload.payloadBytes) {
            detach(id, slot: batches.index(forKey: id)!, from: worker, pool: b.pool)
            split(id, halves, code: code, kills: kills, now)
            return
        }
        let isolated = killed && b.meta.requestCount < 2 && kills >= config.splitAfterKills && b.parent != nil
        if retryable && !isolated && charged < UInt32(b.maxAttempts) {
            detach(id, slot: batches.index(forKey: id)!, from: worker, pool: b.pool)
            requeue(id)
            journalAttempt(id)
            pools[b.pool]!.counters.retried += 1
            emit(.event(.requeued(batchID: id, attempt: b.attempt, code: code, reason: message)))
            dispatch(b.pool, now)
        } else {
            let why = isolated ? "this request killed the engine \(kills) times (\(code)): \(message)"
                : retryable ? "\(message) (gave up after \(charged) attempts)" : message
            finish(id, .failed(code: code, message: why, partial: partial), now)
        }
    }

    /// Replaces a batch by its two halves, queued at the front; it finishes when both have.
    mutating func split(_ id: String, _ halves: (first: [UInt8], second: [UInt8]), code: AnyFailureCode, kills: UInt32, _ now: Timestamp) {
        let b = batches[id]!
        let counts = [b.meta.requestCount / 2, b.meta.requestCount - b.meta.requestCount / 2]
        let children = [SplitHalf(parent: id, index: 0), SplitHalf(parent: id, index: 1)]
        batches[id]!.state = .split(children: children.map(\.batchID))
        // Pushed to the front in reverse, so the first half runs first.
        for (index, bytes) in [halves.first, halves.second].enumerated().reversed() {
            var meta = b.meta
            meta.requestCount = counts[index]
            meta.deadlineMilliseconds = 0 // the original batch's deadline covers its halves
            var child = BatchRecord(id: children[index].batchID, pool: b.pool, session: b.session, meta: meta, maxAttempts: b.maxAttempts,
                                    payload: Payload(payloadBytes: bytes), acceptedAt: now, deadline: nil)
            child.half = children[index]
            child.depth = b.depth + 1
            batches[child.id] = child
            pools[b.pool]!.heldBytes += bytes.count
            requeue(child.id)
        }
        emit(.event(.split(batchID: id, requests: Int(b.meta.requestCount), depth: b.depth + 1, kills: kills, code: code)))
        dispatch(b.pool, now)
    }

    /// Whether a batch holds the id of a half of `id` (only one restored from a journal written
    /// before producers' ids were refused `~`): then the batch is retried whole, not split.
    func halfIDsTaken(_ id: String) -> Bool {
        (0...1).contains { batches[SplitHalf(parent: id, index: $0).batchID] != nil }
    }

    /// The batch a producer submitted that `id` is, or was cut from.
    func root(of id: String) -> String {
        var current = id
        while let parent = batches[current]?.parent { current = parent }
        return current
    }

    /// Makes a batch terminal and delivers its outcome to its session.
    mutating func finish(_ id: String, _ outcome: Outcome<Payload>, _ now: Timestamp) {
        guard let slot = batches.index(forKey: id) else { return }
        finish(slot: slot, outcome, now)
    }

    /// `finish` for the batch in `slot` (held).
    mutating func finish(slot: Int, _ outcome: Outcome<Payload>, _ now: Timestamp) {
        // The fields it needs, read in place: a copy of the whole record would retain and
        // release each of its fields, on every batch.
        func read(_ r: inout BatchRecord<Payload>) -> Finishing {
            Finishing(id: r.id, pool: r.pool, session: r.session, state: r.state, requestCount: r.meta.requestCount, half: r.half,
                      totalDispatches: r.totalDispatches, acceptedAt: r.acceptedAt)
        }
        let b = read(&batches[slot: slot])
        let id = b.id
        switch b.state {
        case .finished:
            return
        case .queued:
            withPool(b.pool) { p in
                p.queuedBatches -= 1
                p.queuedRequests -= Int(b.requestCount)
            }
        case .running(let worker, _, _):
            detach(id, slot: slot, from: worker, pool: b.pool)
        case .split(let children):
            for child in children { abandon(child, now) } // finished early (cancel, deadline)
        }
        if let half = b.half {
            // A half reports to the batch it was cut from, as results: a failed half fails its requests.
            let (stats, results): ([UInt8]?, [UInt8]) = {
                switch outcome {
                case .result(let stats, let payload): return (stats.payloadBytes, payload.payloadBytes)
                case .failed(let code, let message, _):
                    return (nil, format.failedResults(batches[slot: slot].payload.payloadBytes, code: code, message: message))
                }
            }()
            if case .failed(let code, let message, _) = outcome {
                emit(.event(.isolated(batchID: root(of: id), requests: Int(b.requestCount), code: code, message: message)))
            }
            forget(slot: slot)
            halfFinished(half.parent, index: half.index, stats: stats, results: results, now)
            return
        }
        if !recoveredAttempts.isEmpty { recoveredAttempts[id] = nil }
        journal(.finished(batchID: id, outcome: outcome.journaled))
        // The new state in place (`abandon` above may have removed halves, never this batch: its
        // slot holds). The batch held its payload; now its outcome too (`heldBytes`).
        withBatch(slot: slot) { r in r.state = .finished(outcome, at: now) }
        let added = outcome.byteCount
        // The session's route read with its bytes (one lookup: nothing below adds or removes a session).
        let route = ifSession(b.session) { s in
            s.heldBytes += added
            return s.route
        } ?? nil
        withPool(b.pool) { p in
            p.heldBytes += added
            if case .result = outcome {
                p.counters.completed += 1
                p.counters.completedRequests += Int(b.requestCount)
            } else {
                p.counters.failed += 1
            }
        }
        finishedOrder.append((id, now))
        switch outcome {
        case .result:
            emit(.event(.completed(batchID: id, pool: b.pool, attempts: b.totalDispatches, latencyMilliseconds: now.milliseconds(since: b.acceptedAt))))
        case .failed(let code, let message, _):
            emit(.event(.failed(batchID: id, pool: b.pool, code: code, message: message)))
        }
        if b.half == nil, let route { deliver(id, outcome, to: route, attempts: b.totalDispatches) }
    }

    /// What `finish` reads of a batch.
    struct Finishing {
        let id: String
        let pool: String
        let session: SessionKey
        let state: BatchState<Payload>
        let requestCount: UInt32
        let half: SplitHalf?
        let totalDispatches: UInt32
        let acceptedAt: Timestamp
    }

    /// A half finished: keep its results; once every half is in, finish the batch with them merged.
    mutating func halfFinished(_ id: String, index: Int, stats: [UInt8]?, results: [UInt8], _ now: Timestamp) {
        guard let b = batches[id], case .split(let children) = b.state else { return }
        batches[id]!.childResults[index] = (stats, results)
        guard batches[id]!.childResults.count == children.count else { return }
        let parts = (0..<children.count).compactMap { batches[id]!.childResults[$0] }
        batches[id]!.childResults = [:]
        let merged = Outcome<Payload>.result(stats: Payload(payloadBytes: format.mergeStats(parts.compactMap(\.stats), parts: parts.count)),
                                             payload: Payload(payloadBytes: format.concatenate(parts.map(\.payload))))
        finish(id, merged, now)
    }

    /// Drops a half (and its own halves) whose batch finished without it: cancels it where it runs.
    mutating func abandon(_ id: String, _ now: Timestamp) {
        guard let b = batches[id] else { return }
        switch b.state {
        case .queued:
            pools[b.pool]!.queuedBatches -= 1
            pools[b.pool]!.queuedRequests -= Int(b.meta.requestCount)
        case .running(let worker, _, _):
            sendWorker(worker, .cancel(batchID: id, attempt: b.attempt), now)
            detach(id, slot: batches.index(forKey: id)!, from: worker, pool: b.pool)
        case .split(let children):
            for child in children { abandon(child, now) }
        case .finished:
            break
        }
        forget(id)
    }

    /// Sends a finished batch's outcome to its session's current connection, if it has one.
    mutating func deliver(_ id: String) {
        guard let b = batches[id] else { return }
        deliver(b)
    }

    /// `deliver` for a record at hand.
    mutating func deliver(_ b: BatchRecord<Payload>) {
        guard b.parent == nil, case .finished(let outcome, _) = b.state else { return }
        deliver(b.id, outcome, to: b.session, attempts: b.totalDispatches)
    }

    /// Sends a batch's outcome to `session`'s current connection, if it has one.
    mutating func deliver(_ id: String, _ outcome: Outcome<Payload>, to session: SessionKey, attempts: UInt32) {
        guard let route = ifSession(session, { $0.route }) ?? nil else { return }
        deliver(id, outcome, to: route, attempts: attempts)
    }

    /// Sends a batch's outcome to the connection `route`.
    mutating func deliver(_ id: String, _ outcome: Outcome<Payload>, to route: PeerID, attempts: UInt32) {
        switch outcome {
        case .result(let stats, let payload):
            emit(.toProducer(route, .result(batchID: id, attempts: attempts, stats: stats, payload: payload)))
        case .failed(let code, let message, let partial):
            emit(.toProducer(route, .failed(batchID: id, attempts: attempts, code: code, message: message, partial: partial)))
        }
    }

    /// Forgets a batch entirely (after ACK or retention).
    mutating func forget(_ id: String) {
        guard let slot = batches.index(forKey: id) else { return }
        forget(slot: slot)
    }

    /// `forget` for the batch in `slot` (held).
    mutating func forget(slot: Int) {
        let b = batches.remove(at: slot)
        let id = b.id
        if b.parent == nil { journal(.removed(batchID: id)) }
        if !recoveredAttempts.isEmpty { recoveredAttempts[id] = nil }
        let held = b.heldBytes, isRoot = b.parent == nil
        if let slot = pools.index(forKey: b.pool) { pools.values[slot].heldBytes -= held }
        guard let place = sessions.index(forKey: b.session) else { return }
        let unused: Bool = { (s: inout SessionRecord) in
            if isRoot { s.heldBytes -= held }
            s.batches.remove(slot) // freed above, and not taken since
            return s.batches.isEmpty && s.route == nil
        }(&sessions.values[place])
        if unused { sessions.remove(at: place) }
    }
}

/// An acknowledged batch, as remembered after the broker forgot it.
struct AckedBatch {
    let pool: String
    let payloadHash: Int
    let payloadBytes: Int
}

/// A batch's deadline in the deadline heap.
struct DeadlineEntry: Comparable {
    let at: Timestamp
    let batchID: String

    static func < (a: DeadlineEntry, b: DeadlineEntry) -> Bool { a.at < b.at }
    static func == (a: DeadlineEntry, b: DeadlineEntry) -> Bool { a.at == b.at && a.batchID == b.batchID }
}
