import CompassProtocol
import Foundation
import Synchronization

/// Dynamic batching: requests for the same pool go to the broker as one batch when they meet
/// while the pool is busy; a request for a pool with room goes at once (`BatchWindow` decides, and
/// says how). Each caller gets its own request's result. Flushes run concurrently: a slow batch
/// does not hold back the next.
public final class Batcher: Sendable {
    public struct Configuration: Sendable {
        public var maxBatch: Int
        public var maxWaitNanoseconds: UInt64
        public var maxBatchBytes: Int
        /// Batches in flight per worker below which a pool whose workers report no capacity has
        /// room (0: every request waits up to `maxWait` for others, as before issue 17).
        public var eagerBatches: Int

        public init(maxBatch: Int = 32, maxWaitMilliseconds: Double = 5, maxBatchBytes: Int = 8 << 20, eagerBatches: Int = 2) {
            self.maxBatch = max(1, maxBatch)
            self.maxWaitNanoseconds = UInt64(max(0, maxWaitMilliseconds) * 1_000_000)
            self.maxBatchBytes = maxBatchBytes
            self.eagerBatches = max(0, eagerBatches)
        }

        var window: BatchWindow.Configuration {
            .init(maxBatch: maxBatch, maxBatchBytes: maxBatchBytes, maxWaitNanoseconds: maxWaitNanoseconds, eagerBatches: eagerBatches)
        }
    }

    /// Counters since start: how requests were grouped, why batches went, how long requests
    /// waited to be flushed.
    public typealias Stats = BatchWindow.Stats

    struct Item: Sendable {
        let id: UInt64
        let request: InferenceRequest
        let deadlineAt: UInt64?
        let slot: Slot
    }

    struct State {
        var window: BatchWindow
        /// Requests pending or in flight, by id.
        var items: [UInt64: Item] = [:]
        var nextID: UInt64 = 0
    }

    public let configuration: Configuration
    let submitter: Submitter
    let room: @Sendable (String) -> BatchWindow.Room
    let state: Mutex<State>

    /// - Parameter room: what the broker last said about a pool's workers and capacity.
    public init(configuration: Configuration, room: @escaping @Sendable (String) -> BatchWindow.Room = { _ in .init() },
                submit: @escaping SubmitBatch) {
        self.configuration = configuration
        self.submitter = Submitter(submit)
        self.room = room
        self.state = Mutex(State(window: BatchWindow(configuration: configuration.window)))
    }

    public var stats: Stats { state.withLock { $0.window.stats } }

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
        enqueue(Item(id: id, request: request, deadlineAt: deadlineAt, slot: slot), pool: pool)
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
        let room = room(pool)
        let (batches, timer) = state.withLock { s -> ([(BatchWindow.Flush, [Item])], BatchWindow.Timer?) in
            s.items[item.id] = item
            let (flushes, timer) = s.window.add(id: item.id, bytes: Batcher.weight(item.request), pool: pool, room: room, now: Batcher.now())
            return (flushes.map { ($0, Batcher.items(of: $0, in: &s)) }, timer)
        }
        for (flush, items) in batches { launch(flush, items) }
        if let timer {
            let wait = configuration.maxWaitNanoseconds
            Task {
                if wait > 0 { try? await Task.sleep(nanoseconds: wait) } else { await Task.yield() }
                self.timerFired(timer)
            }
        }
    }

    /// The items of a flush, taken out of the table (each is answered by the batch's task).
    static func items(of flush: BatchWindow.Flush, in s: inout State) -> [Item] {
        flush.ids.compactMap { s.items.removeValue(forKey: $0) }
    }

    func timerFired(_ timer: BatchWindow.Timer) {
        let batch = state.withLock { s -> (BatchWindow.Flush, [Item])? in
            guard let flush = s.window.timerFired(pool: timer.pool, generation: timer.generation, now: Batcher.now()) else { return nil }
            return (flush, Batcher.items(of: flush, in: &s))
        }
        if let batch { launch(batch.0, batch.1) }
    }

    /// A request that gave up (deadline, cancelled) leaves the pending list if it is still there.
    func remove(_ id: UInt64, pool: String) {
        state.withLock { s in
            s.window.remove(id: id, pool: pool)
            s.items[id] = nil
        }
    }

    /// A batch came back: the window may send what gathered meanwhile.
    func finished(_ flush: BatchWindow.Flush) {
        let room = room(flush.pool)
        let next = state.withLock { s -> (BatchWindow.Flush, [Item])? in
            guard let f = s.window.finished(pool: flush.pool, requests: flush.ids.count, room: room, now: Batcher.now()) else { return nil }
            return (f, Batcher.items(of: f, in: &s))
        }
        if let next { launch(next.0, next.1) }
    }

    func launch(_ flush: BatchWindow.Flush, _ items: [Item]) {
        let pool = flush.pool
        Task {
            defer { finished(flush) }
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
