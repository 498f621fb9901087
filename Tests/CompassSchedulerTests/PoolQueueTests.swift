import Testing
@testable import CompassScheduler

/// The pool queue on its own: its order (priority, then sessions in turn, then FIFO), lazy removal,
/// and that it keeps nothing once drained (a line per session and a level per priority exist only
/// while they hold entries, so a stream of short-lived sessions leaves no memory behind).
@Suite("Pool queue")
struct PoolQueueTests {
    static let a = SessionKey.named("a"), b = SessionKey.named("b"), anonymous = SessionKey.anonymous(PeerID("route"))

    /// Pops every entry, with all of them counted as still queued unless listed in `gone`.
    static func drain(_ queue: inout PoolQueue<String>, gone: Set<String> = []) -> [String] {
        var order: [String] = []
        while let id = queue.pop(isQueued: { !gone.contains($0) }) { order.append(id) }
        return order
    }

    @Test("Higher priority first; within a level, sessions take turns and each session's line is FIFO")
    func order() {
        var q = PoolQueue<String>()
        q.push("a1", session: Self.a, priority: 0)
        q.push("a2", session: Self.a, priority: 0)
        q.push("a3", session: Self.a, priority: 0)
        q.push("b1", session: Self.b, priority: 0)
        q.push("x1", session: Self.anonymous, priority: 0)
        q.push("urgent", session: Self.b, priority: 5)
        q.push("late", session: Self.a, priority: -1)
        #expect(Self.drain(&q) == ["urgent", "a1", "b1", "x1", "a2", "a3", "late"])
    }

    @Test("A batch pushed back to the front leads its session's line; a session that comes back with one is served next")
    func atFront() {
        var q = PoolQueue<String>()
        q.push("a1", session: Self.a, priority: 0)
        q.push("b1", session: Self.b, priority: 0)
        q.push("b2", session: Self.b, priority: 0)
        #expect(q.pop(isQueued: { _ in true }) == "a1")
        q.push("a1", session: Self.a, priority: 0, atFront: true) // a retry
        q.push("b0", session: Self.b, priority: 0, atFront: true)
        #expect(Self.drain(&q) == ["a1", "b0", "b1", "b2"])
    }

    @Test("Entries no longer queued are skipped and counted out")
    func lazyRemoval() {
        var q = PoolQueue<String>()
        for id in ["a1", "a2", "a3"] { q.push(id, session: Self.a, priority: 0) }
        q.push("b1", session: Self.b, priority: 2)
        #expect(q.entries == 4)
        #expect(q.pop(isQueued: { $0 != "b1" && $0 != "a1" }) == "a2")
        #expect(q.entries == 1)
        #expect(Self.drain(&q) == ["a3"])
        #expect(q.entries == 0)
    }

    @Test("Drained, it holds no line, no session in a ring and no level, however many sessions passed through")
    func boundedOnceDrained() {
        var q = PoolQueue<String>()
        for round in 0..<50 {
            for s in 0..<20 {
                let session = SessionKey.named("s\(round)-\(s)")
                q.push("\(round)-\(s)-0", session: session, priority: Int16(s % 3))
                q.push("\(round)-\(s)-1", session: session, priority: Int16(s % 3))
            }
            #expect(Self.drain(&q, gone: ["\(round)-0-1"]).count == 39)
            #expect(q.entries == 0)
            #expect(q.levels.isEmpty && q.priorities.isEmpty)
        }
        q.push("one", session: Self.a, priority: 1)
        #expect(q.levels.count == 1 && q.levels[1]?.lines.count == 1 && q.levels[1]?.ring.count == 1)
        #expect(Self.drain(&q) == ["one"])
        #expect(q.levels.isEmpty)
    }
}
