import DequeModule

/// The queue of one pool: strict priority between levels, round-robin between producer sessions
/// within a level, FIFO within a session. So a huge job does not starve a small one, and a requeued
/// batch goes back to the front of its own line.
///
/// Removal is lazy: `pop` asks `isQueued` and skips entries that were cancelled meanwhile.
///
/// Nothing here is `private`: the broker's module specializes the scheduler for its payload type
/// through cross-module optimization, which serializes every function of this module (Package.swift)
/// and cannot serialize one that touches a private declaration: a caller that inlined `push` or
/// `pop` would then run unspecialized, through generic metadata and value witnesses, on every
/// SUBMIT. Use `push` and `pop` only.
struct PoolQueue {
    struct Level {
        var lines: [SessionKey: Deque<String>] = [:]
        /// Sessions with a non-empty line, in serving order.
        var ring: Deque<SessionKey> = []
    }

    var levels: [Int16: Level] = [:]
    /// Priorities with entries, highest first.
    var priorities: [Int16] = []
    /// Entries held, including lazily removed ones.
    var entries = 0

    mutating func push(_ batchID: String, session: SessionKey, priority: Int16, atFront: Bool = false) {
        if levels[priority] == nil {
            levels[priority] = Level()
            let at = priorities.firstIndex(where: { $0 < priority }) ?? priorities.endIndex
            priorities.insert(priority, at: at)
        }
        modifyLevel(priority) { level in
            if level.lines[session] == nil || level.lines[session]!.isEmpty {
                level.lines[session, default: []].append(batchID)
                // A session coming back to the queue with a retry is served next; a new one waits its turn.
                if atFront { level.ring.prepend(session) } else { level.ring.append(session) }
            } else if atFront {
                level.lines[session]!.prepend(batchID)
            } else {
                level.lines[session]!.append(batchID)
            }
        }
        entries += 1
    }

    /// The next batch id that is still queued, or nil.
    mutating func pop(isQueued: (String) -> Bool) -> String? {
        while let priority = priorities.first {
            // Mutate the level in place: copying a Deque out of the dictionary would copy it whole.
            while let session = levels[priority]!.ring.popFirst() {
                guard let id = levels[priority]!.lines[session]?.popFirst() else {
                    levels[priority]!.lines[session] = nil
                    continue
                }
                entries -= 1
                if levels[priority]!.lines[session]!.isEmpty {
                    levels[priority]!.lines[session] = nil
                } else {
                    levels[priority]!.ring.append(session)
                }
                if isQueued(id) { return id }
            }
            levels[priority] = nil
            priorities.removeFirst()
        }
        return nil
    }

    mutating func modifyLevel(_ priority: Int16, _ body: (inout Level) -> Void) {
        body(&levels[priority]!)
    }
}
