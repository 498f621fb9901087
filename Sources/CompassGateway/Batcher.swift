import CompassProtocol
import Foundation
import Synchronization

/// What one compass batch came back with: the results it has (by custom_id) and, when the batch
/// failed as a whole, why (a FAILED batch may still carry some results).
public struct BatchAnswer: Sendable {
    public var results: [String: InferenceResult]
    public var failure: CompassFailure?

    public init(results: [String: InferenceResult] = [:], failure: CompassFailure? = nil) {
        self.results = results
        self.failure = failure
    }
}

/// Submits one batch to a pool and waits for its answer (never throws: failures are answers).
public typealias SubmitBatch = @Sendable (_ pool: String, _ requests: [InferenceRequest], _ deadlineMilliseconds: UInt32) async -> BatchAnswer

/// Sends batches through `once`; a batch refused as `too_large` is cut in halves and sent again,
/// down to single requests, so gathering requests never makes one fail that would pass alone.
public struct Submitter: Sendable {
    public let once: SubmitBatch

    public init(_ once: @escaping SubmitBatch) { self.once = once }

    /// Each request's result, by custom_id.
    public func submit(pool: String, requests: [InferenceRequest], deadlineMilliseconds: UInt32 = 0) async -> [String: Result<InferenceResult, CompassFailure>] {
        guard !requests.isEmpty else { return [:] }
        let answer = await once(pool, requests, deadlineMilliseconds)
        if let failure = answer.failure, failure.code == RejectCode.tooLarge.rawValue, requests.count > 1, answer.results.isEmpty {
            let middle = requests.count / 2
            async let first = submit(pool: pool, requests: Array(requests[..<middle]), deadlineMilliseconds: deadlineMilliseconds)
            async let second = submit(pool: pool, requests: Array(requests[middle...]), deadlineMilliseconds: deadlineMilliseconds)
            return (await first).merging(await second) { a, _ in a }
        }
        var out: [String: Result<InferenceResult, CompassFailure>] = [:]
        for request in requests {
            let id = request.customID
            if let result = answer.results[id] {
                if let error = result.error {
                    out[id] = .failure(CompassFailure(code: error.code, message: error.message))
                } else {
                    out[id] = .success(result)
                }
            } else {
                out[id] = .failure(answer.failure ?? CompassFailure(code: FailureCode.engineError.rawValue,
                                                                    message: "the engine returned no result for this request"))
            }
        }
        return out
    }
}

/// Dynamic batching: requests for the same pool that arrive close together go to the broker as
/// one batch. A pool's pending requests are flushed when there are `maxBatch` of them, when
/// adding one would pass `maxBatchBytes`, or `maxWait` after the first of them arrived, whichever
/// comes first; so batching adds at most `maxWait` to a request's latency. Each caller gets its
/// own request's result. Flushes run concurrently: a slow batch does not hold back the next.
public final class Batcher: Sendable {
    public struct Configuration: Sendable {
        public var maxBatch: Int
        public var maxWaitNanoseconds: UInt64
        public var maxBatchBytes: Int

        public init(maxBatch: Int = 32, maxWaitMilliseconds: Double = 5, maxBatchBytes: Int = 8 << 20) {
            self.maxBatch = max(1, maxBatch)
            self.maxWaitNanoseconds = UInt64(max(0, maxWaitMilliseconds) * 1_000_000)
            self.maxBatchBytes = maxBatchBytes
        }
    }

    /// Counters since start: how requests were grouped and how long they waited to be flushed.
    public struct Stats: Sendable, Equatable {
        public var requests = 0
        public var batches = 0
        public var largestBatch = 0
        public var totalWaitNanoseconds: UInt64 = 0
        public var maxWaitNanoseconds: UInt64 = 0

        public var meanBatchSize: Double { batches == 0 ? 0 : Double(requests) / Double(batches) }
        public var meanWaitMilliseconds: Double { requests == 0 ? 0 : Double(totalWaitNanoseconds) / Double(requests) / 1e6 }
        public var maxWaitMilliseconds: Double { Double(maxWaitNanoseconds) / 1e6 }
    }

    struct Item: Sendable {
        let id: UInt64
        let request: InferenceRequest
        let bytes: Int
        let enqueuedAt: UInt64
        let deadlineAt: UInt64?
        let slot: Slot
    }

    struct PoolState {
        var pending: [Item] = []
        var bytes = 0
        /// Bumped at every flush: a timer armed for an earlier set of pending requests does nothing.
        var generation: UInt64 = 0
        var timerArmed = false
    }

    struct State {
        var pools: [String: PoolState] = [:]
        var nextID: UInt64 = 0
        var stats = Stats()
    }

    public let configuration: Configuration
    let submitter: Submitter
    let state = Mutex(State())

    public init(configuration: Configuration, submit: @escaping SubmitBatch) {
        self.configuration = configuration
        self.submitter = Submitter(submit)
    }

    public var stats: Stats { state.withLock { $0.stats } }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// What a request weighs in a batch payload, roughly (the bound only has to be approximate).
    static func weight(_ r: InferenceRequest) -> Int {
        (r.prompt?.utf8.count ?? 0) + (r.promptTokenIDs?.count ?? 0) * 8
            + (r.messages ?? []).reduce(0) { $0 + $1.content.utf8.count + $1.role.utf8.count + 32 }
            + (r.stop ?? []).reduce(0) { $0 + $1.utf8.count + 4 } + 160
    }

    /// Runs `request` on `pool` in the next batch and returns its result. Throws `CompassFailure`
    /// (the batch's or the request's own error, or `deadline_exceeded` once `deadlineMilliseconds`
    /// have passed since this call; 0: no deadline) or `CancellationError`.
    public func submit(_ request: InferenceRequest, pool: String, deadlineMilliseconds: UInt32 = 0) async throws -> InferenceResult {
        let slot = Slot()
        let start = Batcher.now()
        let deadlineAt = deadlineMilliseconds > 0 ? start + UInt64(deadlineMilliseconds) * 1_000_000 : nil
        let id = state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        let item = Item(id: id, request: request, bytes: Batcher.weight(request), enqueuedAt: start, deadlineAt: deadlineAt, slot: slot)
        enqueue(item, pool: pool)
        let timer: Task<Void, Never>? = deadlineAt.map { _ in
            Task { [weak self] in
                try? await Task.sleep(nanoseconds: UInt64(deadlineMilliseconds) * 1_000_000)
                guard !Task.isCancelled else { return }
                if slot.resume(.failure(CompassFailure(code: CompassFailure.deadlineCode,
                                                       message: "no result within the gateway's deadline of \(deadlineMilliseconds) ms"))) {
                    self?.remove(id, pool: pool)
                }
            }
        }
        defer { timer?.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { slot.set($0) }
        } onCancel: {
            if slot.resume(.failure(CancellationError())) { self.remove(id, pool: pool) }
        }
    }

    func enqueue(_ item: Item, pool: String) {
        var flushes: [[Item]] = []
        var armTimer: UInt64?
        state.withLock { s in
            var p = s.pools[pool] ?? PoolState()
            if !p.pending.isEmpty && p.bytes + item.bytes > configuration.maxBatchBytes {
                flushes.append(take(&p))
            }
            p.pending.append(item)
            p.bytes += item.bytes
            if p.pending.count >= configuration.maxBatch {
                flushes.append(take(&p))
            } else if !p.timerArmed {
                p.timerArmed = true
                armTimer = p.generation
            }
            s.pools[pool] = p
            for batch in flushes { note(batch, in: &s.stats) }
        }
        for batch in flushes { launch(batch, pool: pool) }
        if let generation = armTimer {
            let wait = configuration.maxWaitNanoseconds
            Task {
                if wait > 0 { try? await Task.sleep(nanoseconds: wait) } else { await Task.yield() }
                self.timerFired(pool: pool, generation: generation)
            }
        }
    }

    func timerFired(pool: String, generation: UInt64) {
        let batch: [Item]? = state.withLock { s in
            guard var p = s.pools[pool], p.generation == generation, !p.pending.isEmpty else { return nil }
            let batch = take(&p)
            s.pools[pool] = p
            note(batch, in: &s.stats)
            return batch
        }
        if let batch { launch(batch, pool: pool) }
    }

    /// Empties a pool's pending list and disarms its timer.
    func take(_ p: inout PoolState) -> [Item] {
        let batch = p.pending
        p.pending.removeAll(keepingCapacity: true)
        p.bytes = 0
        p.generation &+= 1
        p.timerArmed = false
        return batch
    }

    func note(_ batch: [Item], in stats: inout Stats) {
        let now = Batcher.now()
        stats.batches += 1
        stats.requests += batch.count
        stats.largestBatch = max(stats.largestBatch, batch.count)
        for item in batch {
            let waited = now >= item.enqueuedAt ? now - item.enqueuedAt : 0
            stats.totalWaitNanoseconds += waited
            stats.maxWaitNanoseconds = max(stats.maxWaitNanoseconds, waited)
        }
    }

    /// A request that gave up (deadline, cancelled) leaves the pending list if it is still there.
    func remove(_ id: UInt64, pool: String) {
        state.withLock { s in
            guard var p = s.pools[pool], let index = p.pending.firstIndex(where: { $0.id == id }) else { return }
            p.bytes -= p.pending[index].bytes
            p.pending.remove(at: index)
            s.pools[pool] = p
        }
    }

    func launch(_ items: [Item], pool: String) {
        Task {
            let live = items.filter { !$0.slot.isFinished }
            guard !live.isEmpty else { return }
            let now = Batcher.now()
            // The batch's deadline on the broker: the least time any of its requests has left.
            var deadline: UInt32 = 0
            for case let at? in live.map(\.deadlineAt) {
                let left = UInt32(clamping: max(1, (Int64(bitPattern: at &- now)) / 1_000_000))
                deadline = deadline == 0 ? left : min(deadline, left)
            }
            let requests = live.map { item -> InferenceRequest in
                var r = item.request
                r.customID = "g\(item.id)"
                return r
            }
            let results = await submitter.submit(pool: pool, requests: requests, deadlineMilliseconds: deadline)
            for item in live {
                _ = item.slot.resume(results["g\(item.id)"] ?? .failure(CompassFailure(
                    code: FailureCode.engineError.rawValue, message: "no result for this request")))
            }
        }
    }
}

/// Where one waiting request's result goes: resumed once, by whichever comes first (the batch's
/// answer, the deadline, or cancellation), even before the caller has started to wait.
final class Slot: Sendable {
    private struct State {
        var continuation: CheckedContinuation<InferenceResult, any Error>?
        var early: Result<InferenceResult, any Error>?
        var finished = false
    }
    private let state = Mutex(State())

    var isFinished: Bool { state.withLock { $0.finished } }

    func set(_ continuation: CheckedContinuation<InferenceResult, any Error>) {
        let early: Result<InferenceResult, any Error>? = state.withLock { s in
            if let e = s.early { s.early = nil; return e }
            s.continuation = continuation
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    /// True when this call delivered the result (false: something else already had).
    @discardableResult
    func resume(_ result: Result<InferenceResult, some Error>) -> Bool {
        let mapped = result.mapError { $0 as any Error }
        let (delivered, continuation): (Bool, CheckedContinuation<InferenceResult, any Error>?) = state.withLock { s in
            guard !s.finished else { return (false, nil) }
            s.finished = true
            if let c = s.continuation { s.continuation = nil; return (true, c) }
            s.early = mapped
            return (true, nil)
        }
        continuation?.resume(with: mapped)
        return delivered
    }
}
