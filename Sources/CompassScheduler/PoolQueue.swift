import DequeModule

/// The queue of one pool: strict priority between levels, round-robin between producer sessions
/// within a level, FIFO within a session. So a huge job does not starve a small one, and a requeued
/// batch goes back to the front of its own line.
///
/// Removal is lazy: `pop` asks `isQueued` and skips entries that were cancelled meanwhile.
/// The scheduler's entries are `BatchRef`s (a batch's slot, not its id: no hashing per entry).
///
/// Nothing here is `private`: the broker's module specializes the scheduler for its payload type
/// through cross-module optimization, which serializes every function of this module (Package.swift)
/// and cannot serialize one that touches a private declaration: a caller that inlined `push` or
/// `pop` would then run unspecialized, through generic metadata and value witnesses, on every
/// SUBMIT. Use `push` and `pop` only.
struct PoolQueue<Entry> {
    struct Level {
        var lines: [SessionKey: Deque<Entry>] = [:]
        /// Sessions with a non-empty line, in serving order.
        var ring: Deque<SessionKey> = []

        // Lines are reached through their dictionary index and `values`, in place: one lookup
        // per push or pop instead of one per step.

        mutating func push(_ batchID: Entry, session: SessionKey, atFront: Bool) {
            if let line = lines.index(forKey: session), !lines.values[line].isEmpty {
                if atFront { lines.values[line].prepend(batchID) } else { lines.values[line].append(batchID) }
                return
            }
            lines[session, default: []].append(batchID)
            // A session coming back to the queue with a retry is served next; a new one waits its turn.
            if atFront { ring.prepend(session) } else { ring.append(session) }
        }

        /// The next entry in serving order (queued or not), or nil when the level holds none.
        mutating func pop() -> Entry? {
            while let session = ring.popFirst() {
                guard let line = lines.index(forKey: session) else { continue }
                guard let id = lines.values[line].popFirst() else {
                    lines.remove(at: line)
                    continue
                }
                if lines.values[line].isEmpty { lines.remove(at: line) } else { ring.append(session) }
                return id
            }
            return nil
        }
    }

    var levels: [Int16: Level] = [:]
    /// Priorities with entries, highest first.
    var priorities: [Int16] = []
    /// Entries held, including lazily removed ones.
    var entries = 0

    mutating func push(_ batchID: Entry, session: SessionKey, priority: Int16, atFront: Bool = false) {
        if levels[priority] == nil {
            levels[priority] = Level()
            let at = priorities.firstIndex(where: { $0 < priority }) ?? priorities.endIndex
            priorities.insert(priority, at: at)
        }
        levels.values[levels.index(forKey: priority)!].push(batchID, session: session, atFront: atFront)
        entries += 1
    }

    /// The next entry that is still queued, or nil.
    mutating func pop(isQueued: (Entry) -> Bool) -> Entry? {
        while let priority = priorities.first {
            // The level in place: copying a Deque out of the dictionary would copy it whole.
            let level = levels.index(forKey: priority)!
            while let id = levels.values[level].pop() {
                entries -= 1
                if isQueued(id) { return id }
            }
            levels.remove(at: level)
            priorities.removeFirst()
        }
        return nil
    }
}
