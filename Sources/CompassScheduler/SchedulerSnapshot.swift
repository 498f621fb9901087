import CompassProtocol
import HeapModule

/// What the scheduler holds, for STATUS replies and metrics.
public struct SchedulerSnapshot: Sendable, Codable, Equatable {
    public struct Pool: Sendable, Codable, Equatable {
        public var name: String
        public var queuedBatches: Int
        public var queuedRequests: Int
        public var runningBatches: Int
        public var heldBytes: Int
        public var workers: Int
        public var counters: PoolCounters

        enum CodingKeys: String, CodingKey {
            case name, queuedBatches = "queued_batches", queuedRequests = "queued_requests"
            case runningBatches = "running_batches", heldBytes = "held_bytes", workers, counters
        }
    }

    public struct Worker: Sendable, Codable, Equatable {
        public var id: String
        public var pool: String
        public var credit: Int
        public var running: [String]
        /// done/total of each running batch that reported progress.
        public var progress: [String: [UInt32]]
        public var draining: Bool
        public var uptimeMilliseconds: UInt64
        public var completed: Int
        public var lastSeenMillisecondsAgo: UInt64

        enum CodingKeys: String, CodingKey {
            case id, pool, credit, running, progress, draining, uptimeMilliseconds = "uptime_ms", completed
            case lastSeenMillisecondsAgo = "last_seen_ms_ago"
        }
    }

    public struct Session: Sendable, Codable, Equatable {
        public var session: String
        public var connected: Bool
        public var outstanding: Int
        /// Bytes the session holds against its share (`--session-max-bytes`); absent from brokers
        /// that had no share.
        public var heldBytes: Int?

        enum CodingKeys: String, CodingKey {
            case session, connected, outstanding, heldBytes = "held_bytes"
        }
    }

    public var pools: [Pool]
    public var workers: [Worker]
    /// At most `WireProtocol.maxStatusSessions`: those holding the most batches first.
    public var sessions: [Session]
    /// How many sessions the broker holds in all (absent from brokers that listed every one).
    public var sessionsTotal: Int?

    enum CodingKeys: String, CodingKey {
        case pools, workers, sessions, sessionsTotal = "sessions_total"
    }
}

extension Scheduler {
    public func snapshot(now: Timestamp) -> SchedulerSnapshot {
        SchedulerSnapshot(
            pools: pools.keys.sorted().map { name in
                let p = pools[name]!
                return .init(name: name, queuedBatches: p.queuedBatches, queuedRequests: p.queuedRequests,
                             runningBatches: p.runningBatches, heldBytes: p.heldBytes, workers: p.workers.count, counters: p.counters)
            },
            workers: workers.values.sorted { $0.registeredAt < $1.registeredAt }.map { w in
                .init(id: w.id.description, pool: w.pool, credit: w.credit, running: runningIDs(w).sorted(),
                      progress: w.progress.mapValues { [$0.done, $0.total] }, draining: w.drainingSince != nil,
                      uptimeMilliseconds: now.milliseconds(since: w.registeredAt), completed: w.completed,
                      lastSeenMillisecondsAgo: now.milliseconds(since: w.lastSeen))
            },
            sessions: listedSessions(),
            sessionsTotal: sessions.count)
    }

    /// The sessions STATUS lists: all of them up to `WireProtocol.maxStatusSessions`, else those
    /// holding the most batches (by name among equals), so the document stays bounded however many
    /// sessions peers open.
    func listedSessions() -> [SchedulerSnapshot.Session] {
        let limit = WireProtocol.maxStatusSessions
        let listed: [SessionKey]
        if sessions.count <= limit {
            listed = Array(sessions.keys)
        } else {
            var heap = Heap<SessionRank>()
            for (key, record) in sessions {
                heap.insert(SessionRank(outstanding: record.batches.count, name: key.description, key: key))
                if heap.count > limit { _ = heap.popMin() }
            }
            listed = heap.unordered.map(\.key)
        }
        return listed.map { (name: $0.description, key: $0) }.sorted { $0.name < $1.name }.map { name, key in
            let s = sessions[key]!
            return .init(session: name, connected: s.route != nil, outstanding: s.batches.count, heldBytes: s.heldBytes)
        }
    }

    /// Checks the internal invariants; returns a description of each violation (empty when sound).
    /// For tests: cheap enough to call after every step of a randomized run.
    public func checkInvariants() -> [String] {
        var problems: [String] = []
        var queued: [String: Int] = [:], running: [String: Int] = [:], held: [String: Int] = [:], sessionHeld: [SessionKey: Int] = [:]
        for (id, b) in batches {
            held[b.pool, default: 0] += b.heldBytes
            if b.parent == nil { sessionHeld[b.session, default: 0] += b.heldBytes }
            switch b.state {
            case .queued: queued[b.pool, default: 0] += 1
            case .running(let w, _, _):
                running[b.pool, default: 0] += 1
                if workers[w].map({ runningIDs($0).contains(id) }) != true { problems.append("\(id) runs on \(w) which does not hold it") }
            case .split(let children):
                for child in children where batches[child]?.parent != id && batches[child] != nil {
                    problems.append("\(id) lists half \(child) that does not point back")
                }
            case .finished: break
            }
            if let parent = b.parent {
                guard let p = batches[parent], case .split(let children) = p.state, children.contains(id) else {
                    problems.append("half \(id) has no split parent \(parent)"); continue
                }
            } else if sessions[b.session]?.batches.contains(batches.index(forKey: id)!) != true {
                problems.append("\(id) missing from session \(b.session)")
            }
        }
        for (id, w) in workers {
            for batchID in runningIDs(w) {
                guard let b = batches[batchID], case .running(let owner, _, _) = b.state, owner == id else {
                    problems.append("worker \(id) holds \(batchID) which is not running on it"); continue
                }
            }
            if w.credit < 0 { problems.append("worker \(id) has negative credit \(w.credit)") }
        }
        for (name, p) in pools {
            if p.queuedBatches != queued[name, default: 0] { problems.append("pool \(name) counts \(p.queuedBatches) queued, holds \(queued[name, default: 0])") }
            if p.runningBatches != running[name, default: 0] { problems.append("pool \(name) counts \(p.runningBatches) running, holds \(running[name, default: 0])") }
            if p.heldBytes != held[name, default: 0] { problems.append("pool \(name) counts \(p.heldBytes) bytes, holds \(held[name, default: 0])") }
        }
        for (name, record) in sessions {
            // By slot: each must hold a batch of this session (a slot left behind would name a
            // later batch once reused).
            for slot in record.batches where !batches.records.indices.contains(slot) || batches.records[slot]?.session != name {
                problems.append("session \(name) lists slot \(slot), which holds none of its batches")
            }
        }
        for (name, record) in sessions where record.heldBytes != sessionHeld[name, default: 0] {
            problems.append("session \(name) counts \(record.heldBytes) bytes, holds \(sessionHeld[name, default: 0])")
        }
        return problems
    }
}

/// A session's rank for the STATUS list: more batches first, then the name (ascending).
struct SessionRank: Comparable {
    let outstanding: Int
    let name: String
    let key: SessionKey

    /// The lesser is the one to drop first: fewer batches, or a later name among equals.
    static func < (a: SessionRank, b: SessionRank) -> Bool {
        a.outstanding != b.outstanding ? a.outstanding < b.outstanding : a.name > b.name
    }
}
