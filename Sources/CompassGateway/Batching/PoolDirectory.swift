import Foundation
import Synchronization

/// A cache of the broker's pools, refreshed by a STATUS every `refreshInterval`, so the gateway can
/// answer 404 (no such pool) and 503 (no worker serves it) without a round trip per request.
///
/// A positive answer (the pool has workers) is taken from the cache as it is; the broker queues a
/// batch anyway if the last worker just left. A negative one is confirmed by a STATUS no older than
/// `negativeMaxAge` (one round trip, shared by every request that needs it), so a worker that just
/// joined is not missed. A broker that has not answered for `unreachableAfter` makes every pool
/// unavailable.
public final class PoolDirectory: Sendable {
    public enum Availability: Sendable, Equatable {
        case ready
        case noWorkers
        case unknownPool
        case brokerUnreachable
    }

    struct State {
        var pools: [String: PoolInfo] = [:]
        /// Summed worker capacity (sequences) of the pools whose workers all report one.
        var capacities: [String: Int] = [:]
        var brokerID: String?
        /// Monotonic ms when the last STATUS arrived.
        var receivedAt: UInt64?
        var lastSentAt: UInt64 = 0
        /// STATUS requests sent and not answered (lost ones stay counted until later replies pop them).
        var inflight = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    let fetch: @Sendable () async throws -> [UInt8]
    let refreshInterval: UInt64
    let negativeMaxAge: UInt64
    let unreachableAfter: UInt64
    let state = Mutex(State())

    /// - Parameter fetch: asks the broker for its STATUS document.
    public init(refreshMilliseconds: UInt64 = 1000, negativeMaxAgeMilliseconds: UInt64 = 250, unreachableAfterMilliseconds: UInt64 = 5000,
                fetch: @escaping @Sendable () async throws -> [UInt8]) {
        self.fetch = fetch
        self.refreshInterval = refreshMilliseconds
        self.negativeMaxAge = negativeMaxAgeMilliseconds
        self.unreachableAfter = unreachableAfterMilliseconds
    }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds / 1_000_000 }

    /// Refreshes every `refreshInterval` until the task is cancelled.
    public func run() async {
        while !Task.isCancelled {
            requestRefresh(force: true)
            try? await Task.sleep(nanoseconds: refreshInterval * 1_000_000)
        }
    }

    /// Sends a STATUS unless one went out very recently. While replies are missing (the broker is
    /// away), at most one request per few seconds goes out, so unanswered ones do not pile up.
    func requestRefresh(force: Bool = false) {
        let t = PoolDirectory.now()
        let send = state.withLock { s -> Bool in
            let since = t - min(t, s.lastSentAt)
            if since < 50 && !force { return false }
            if s.inflight >= 3 && since < 5000 { return false }
            s.lastSentAt = t
            s.inflight += 1
            return true
        }
        guard send else { return }
        Task {
            let document = try? await fetch()
            apply(document)
        }
    }

    func apply(_ document: [UInt8]?) {
        let parsed = document.flatMap { try? JSONDecoder().decode(StatusDocument.self, from: Data($0)) }
        let waiters: [CheckedContinuation<Void, Never>] = state.withLock { s in
            s.inflight = max(0, s.inflight - 1)
            guard let parsed else { return [] }
            s.pools = Dictionary(parsed.scheduler.pools.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
            s.capacities = parsed.capacities
            s.brokerID = parsed.brokerID
            s.receivedAt = PoolDirectory.now()
            let all = Array(s.waiters.values)
            s.waiters.removeAll()
            return all
        }
        for w in waiters { w.resume() }
    }

    /// Asks for a STATUS and waits for the next one to arrive (at most `timeout` ms).
    func refreshAndWait(timeout: UInt64) async {
        let id = state.withLock { s in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            state.withLock { $0.waiters[id] = c }
            requestRefresh()
            Task {
                try? await Task.sleep(nanoseconds: timeout * 1_000_000)
                let w = state.withLock { $0.waiters.removeValue(forKey: id) }
                w?.resume()
            }
        }
    }

    /// A STATUS no older than `maxAge` ms, fetched if needed (at most one second of waiting).
    func fresh(maxAge: UInt64) async -> State {
        let snapshot = state.withLock { $0 }
        if let at = snapshot.receivedAt, PoolDirectory.now() - min(PoolDirectory.now(), at) <= maxAge { return snapshot }
        await refreshAndWait(timeout: 1000)
        return state.withLock { $0 }
    }

    func classify(_ s: State, _ pool: String) -> Availability {
        guard let at = s.receivedAt, PoolDirectory.now() - min(PoolDirectory.now(), at) <= unreachableAfter else { return .brokerUnreachable }
        guard let info = s.pools[pool] else { return .unknownPool }
        return info.workers > 0 ? .ready : .noWorkers
    }

    /// Whether a request for `pool` can go to the broker now.
    public func availability(of pool: String) async -> Availability {
        let cached = classify(state.withLock { $0 }, pool)
        if cached == .ready { return .ready }
        return classify(await fresh(maxAge: negativeMaxAge), pool)
    }

    /// A pool's workers and capacity as the last STATUS gave them (no round trip: the batcher
    /// asks for every request).
    public func room(of pool: String) -> BatchWindow.Room {
        state.withLock { s in BatchWindow.Room(workers: s.pools[pool]?.workers ?? 1, capacity: s.capacities[pool]) }
    }

    /// The broker's pools, from a STATUS no older than a second; nil when the broker does not answer.
    public func pools() async -> [PoolInfo]? {
        let s = await fresh(maxAge: refreshInterval)
        guard let at = s.receivedAt, PoolDirectory.now() - min(PoolDirectory.now(), at) <= unreachableAfter else { return nil }
        return s.pools.values.sorted { $0.name < $1.name }
    }

    /// Whether the broker answered STATUS recently, and its id.
    public var broker: (reachable: Bool, id: String?, ageMilliseconds: UInt64?) {
        let s = state.withLock { $0 }
        guard let at = s.receivedAt else { return (false, nil, nil) }
        let age = PoolDirectory.now() - min(PoolDirectory.now(), at)
        return (age <= unreachableAfter, s.brokerID, age)
    }
}
