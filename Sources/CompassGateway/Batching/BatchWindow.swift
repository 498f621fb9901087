/// The batching decision of the gateway, as a pure state machine over an injected clock (the
/// `Batcher` runs it under a lock and does the I/O and the timers it asks for).
///
/// A request goes out **at once** while its pool has spare capacity, and is gathered with others
/// only while the pool is saturated (Nagle's rule: hold small sends only while earlier ones are
/// unanswered). The pool has spare capacity while this gateway's requests in flight to it are
/// fewer than the pool's capacity in sequences (the sum of its workers' `capacity`, from the
/// broker's STATUS), or, where a worker reports no capacity, while fewer than `eagerBatches` batches
/// per worker are in flight. While saturated, a pool's pending requests go out when there are
/// `maxBatch` of them, when one more would pass `maxBatchBytes`, `maxWait` after the first of them
/// arrived, or as soon as a batch in flight comes back and the pool has room again, whichever is
/// first: batching never adds more than `maxWait` to a request's latency, and adds nothing when the
/// pool is not busy.
public struct BatchWindow: Sendable {
    public struct Configuration: Sendable, Equatable {
        public var maxBatch: Int
        public var maxBatchBytes: Int
        public var maxWaitNanoseconds: UInt64
        /// Batches in flight per worker below which a pool whose capacity is unknown counts as
        /// having room (0: always gather for `maxWait`, the gateway's behaviour before issue 17).
        public var eagerBatches: Int

        public init(maxBatch: Int = 32, maxBatchBytes: Int = 8 << 20, maxWaitNanoseconds: UInt64 = 5_000_000, eagerBatches: Int = 2) {
            self.maxBatch = max(1, maxBatch)
            self.maxBatchBytes = maxBatchBytes
            self.maxWaitNanoseconds = maxWaitNanoseconds
            self.eagerBatches = max(0, eagerBatches)
        }
    }

    /// What the broker says about a pool's room: its workers and their summed capacity in
    /// sequences (nil when any worker does not report one).
    public struct Room: Sendable, Equatable {
        public var workers: Int
        public var capacity: Int?
        public init(workers: Int = 1, capacity: Int? = nil) {
            self.workers = workers
            self.capacity = capacity
        }
    }

    /// Why a batch went out.
    public enum Reason: String, Sendable, CaseIterable {
        /// The pool had room: the request went at once, without waiting for others.
        case spare
        /// `maxBatch` requests, or `maxBatchBytes`, were pending.
        case full
        /// `maxWait` passed since the first pending request arrived.
        case window
        /// A batch in flight came back and the pool had room again.
        case freed
    }

    public struct Flush: Sendable, Equatable {
        public var pool: String
        public var ids: [UInt64]
        public var reason: Reason
    }

    /// A timer the caller must arm: call `timerFired(pool:generation:now:)` at `deadline`.
    public struct Timer: Sendable, Equatable {
        public var pool: String
        public var generation: UInt64
        public var deadline: UInt64
    }

    public struct Stats: Sendable, Equatable {
        public var requests = 0
        public var batches = 0
        public var largestBatch = 0
        public var totalWaitNanoseconds: UInt64 = 0
        public var maxWaitNanoseconds: UInt64 = 0
        /// Batches by why they went out.
        public var flushes: [Reason: Int] = [:]

        public var meanBatchSize: Double { batches == 0 ? 0 : Double(requests) / Double(batches) }
        public var meanWaitMilliseconds: Double { requests == 0 ? 0 : Double(totalWaitNanoseconds) / Double(requests) / 1e6 }
        public var maxWaitMilliseconds: Double { Double(maxWaitNanoseconds) / 1e6 }
    }

    struct Pending: Sendable {
        var id: UInt64
        var bytes: Int
        var enqueuedAt: UInt64
    }

    struct Pool: Sendable {
        var pending: [Pending] = []
        var bytes = 0
        /// Bumped at every flush: a timer armed for an earlier set of pending requests does nothing.
        var generation: UInt64 = 0
        var timerArmed = false
        var inFlightBatches = 0
        var inFlightRequests = 0
    }

    public let configuration: Configuration
    var pools: [String: Pool] = [:]
    public private(set) var stats = Stats()

    public init(configuration: Configuration) { self.configuration = configuration }

    /// Batches of `pool` sent and not yet answered.
    public func inFlight(_ pool: String) -> (batches: Int, requests: Int) {
        let p = pools[pool] ?? Pool()
        return (p.inFlightBatches, p.inFlightRequests)
    }

    public func pendingCount(_ pool: String) -> Int { pools[pool]?.pending.count ?? 0 }

    /// Whether `pool` can take another batch without waiting: see the type's description.
    func hasRoom(_ p: Pool, _ room: Room) -> Bool {
        if let capacity = room.capacity, capacity > 0 {
            return p.inFlightRequests < capacity
        }
        return p.inFlightBatches < configuration.eagerBatches * max(1, room.workers)
    }

    /// A request of `bytes` arrives for `pool`: the batches to send now, and a timer to arm.
    public mutating func add(id: UInt64, bytes: Int, pool name: String, room: Room, now: UInt64) -> (flushes: [Flush], timer: Timer?) {
        var p = pools[name] ?? Pool()
        var flushes: [Flush] = []
        if !p.pending.isEmpty && p.bytes + bytes > configuration.maxBatchBytes {
            flushes.append(take(&p, name, .full, now))
        }
        p.pending.append(Pending(id: id, bytes: bytes, enqueuedAt: now))
        p.bytes += bytes
        var timer: Timer?
        if p.pending.count >= configuration.maxBatch || p.bytes >= configuration.maxBatchBytes {
            flushes.append(take(&p, name, .full, now))
        } else if hasRoom(p, room) {
            flushes.append(take(&p, name, .spare, now))
        } else if !p.timerArmed {
            p.timerArmed = true
            timer = Timer(pool: name, generation: p.generation, deadline: now &+ configuration.maxWaitNanoseconds)
        }
        pools[name] = p
        return (flushes, timer)
    }

    /// The timer armed for `generation` went off: the pending requests go, if they are still those.
    public mutating func timerFired(pool name: String, generation: UInt64, now: UInt64) -> Flush? {
        guard var p = pools[name], p.generation == generation, !p.pending.isEmpty else { return nil }
        let flush = take(&p, name, .window, now)
        pools[name] = p
        return flush
    }

    /// A batch of `requests` sent to `pool` came back: if the pool has room now, what was pending
    /// goes at once.
    public mutating func finished(pool name: String, requests: Int, room: Room, now: UInt64) -> Flush? {
        guard var p = pools[name] else { return nil }
        p.inFlightBatches = max(0, p.inFlightBatches - 1)
        p.inFlightRequests = max(0, p.inFlightRequests - requests)
        var flush: Flush?
        if !p.pending.isEmpty && hasRoom(p, room) { flush = take(&p, name, .freed, now) }
        pools[name] = p  // kept when idle: a later state must not restart the generations old timers hold
        return flush
    }

    /// A request that gave up (deadline, cancelled) leaves its pool's pending list if still there.
    public mutating func remove(id: UInt64, pool name: String) {
        guard var p = pools[name], let index = p.pending.firstIndex(where: { $0.id == id }) else { return }
        p.bytes -= p.pending[index].bytes
        p.pending.remove(at: index)
        pools[name] = p
    }

    /// Empties a pool's pending list into a batch counted as in flight, and disarms its timer.
    mutating func take(_ p: inout Pool, _ name: String, _ reason: Reason, _ now: UInt64) -> Flush {
        let batch = p.pending
        p.pending.removeAll(keepingCapacity: true)
        p.bytes = 0
        p.generation &+= 1
        p.timerArmed = false
        p.inFlightBatches += 1
        p.inFlightRequests += batch.count
        stats.batches += 1
        stats.requests += batch.count
        stats.largestBatch = max(stats.largestBatch, batch.count)
        stats.flushes[reason, default: 0] += 1
        for item in batch {
            let waited = now >= item.enqueuedAt ? now - item.enqueuedAt : 0
            stats.totalWaitNanoseconds += waited
            stats.maxWaitNanoseconds = max(stats.maxWaitNanoseconds, waited)
        }
        return Flush(pool: name, ids: batch.map(\.id), reason: reason)
    }
}
