import CompassProtocol
import Testing
@testable import CompassScheduler

/// Issue 20 in the pure core: DISCONNECT forgets the worker, results are checked, every CANCEL and
/// every stray ACK is answered, and sessions per connection and in STATUS are bounded.
@Suite("Refusals: DISCONNECT forgets, checked results, CANCEL and ACK replies, bounded sessions")
struct RefusalTests {
    static let goodOne = ResultCheck(payload: .array(count: 1), stats: .other)

    @Test func refusingARegisteredWorkerRequeuesWhatItHeld() {
        var h = Harness()
        h.ready("w", credit: 2)
        h.submit("a")
        h.submit("b")
        #expect(h.log.dispatches.map(\.id) == ["a", "b"])
        let out = h.record(h.scheduler.workerRefused(PeerID("w"), code: .badFrame, reason: "attempt must be 4 bytes", now: h.now))
        #expect(out.sent(to: "w").count == 1)
        guard case .disconnect(let reason)? = out.sent(to: "w").first else { Issue.record("no DISCONNECT: \(out)"); return }
        #expect(reason == "bad_frame: attempt must be 4 bytes")
        #expect(h.scheduler.workerCount == 0)
        // Both batches wait for the next worker, at attempt 2 (worker_lost is charged).
        h.ready("v", credit: 2)
        #expect(h.log.dispatches.filter { $0.worker == "v" }.map(\.attempt) == [2, 2])
        // A late answer of the forgotten worker is stale: DISCONNECT again, nothing delivered.
        let late = h.record(h.scheduler.workerResult(PeerID("w"), batchID: "a", attempt: 1, stats: [0], payload: [0], check: { Self.goodOne }, now: h.now))
        #expect(late.results.isEmpty)
    }

    @Test func refusingAnUnknownWorkerOnlyAnswers() {
        var h = Harness()
        let out = h.record(h.scheduler.workerRefused(PeerID("x"), code: .badFrame, reason: "r", now: h.now))
        #expect(out.sent(to: "x").count == 1 && out.events.isEmpty)
    }

    @Test func aResultTheProducerCannotUseFailsTheAttempt() {
        var h = Harness()
        h.ready("w", credit: 1)
        h.submit("b", requests: 3, maxAttempts: 2)
        let wrongCount = ResultCheck(payload: .array(count: 1), stats: .other)
        let first = h.record(h.scheduler.workerResult(PeerID("w"), batchID: "b", attempt: 1, stats: [0], payload: [0], check: { wrongCount }, now: h.now))
        #expect(first.results.isEmpty)
        #expect(first.events.contains { if case .requeued(_, _, "engine_error", let why) = $0 { why.contains("1 results for a batch of 3") } else { false } })
        #expect(h.log.dispatches.map(\.attempt) == [1, 2])
        let notJSON = ResultCheck(payload: .invalid(offset: 0, reason: "invalid UTF-8"), stats: .other)
        let second = h.record(h.scheduler.workerResult(PeerID("w"), batchID: "b", attempt: 2, stats: [0], payload: [0], check: { notJSON }, now: h.now))
        #expect(second.failures.map(\.code) == ["engine_error"])
        // A good one for a batch of 3 goes through.
        h.submit("c", requests: 3)
        let good = h.record(h.scheduler.workerResult(PeerID("w"), batchID: "c", attempt: 1, stats: [0], payload: [0],
                                                     check: { ResultCheck(payload: .array(count: 3), stats: .other) }, now: h.now))
        #expect(good.results.map(\.id) == ["c"])
    }

    @Test func anUnknownWorkerGetsOneDisconnectPerHeartbeatInterval() {
        var h = Harness()
        func disconnects() -> Int {
            h.record(h.scheduler.workerHeartbeat(PeerID("ghost"), now: h.now)).sent(to: "ghost").count
        }
        #expect((0..<50).map { _ in disconnects() }.reduce(0, +) == 1)
        _ = h.advance(100)
        #expect((0..<50).map { _ in disconnects() }.reduce(0, +) == 1)
        // A refused message always gets its DISCONNECT, with the reason.
        #expect(h.record(h.scheduler.workerRefused(PeerID("ghost"), code: .badFrame, reason: "r", now: h.now)).sent(to: "ghost").count == 1)
        // A worker that registers again is told at once when it is lost again, in the same interval.
        h.ready("ghost")
        h.record(h.scheduler.workerRefused(PeerID("ghost"), code: .badFrame, reason: "r", now: h.now))
        #expect(disconnects() == 1)
    }

    @Test func cancelOfAFinishedBatchResendsItsOutcome() {
        var h = Harness()
        h.ready("w")
        h.submit("b")
        h.result("w", "b")
        let out = h.record(h.scheduler.cancel(from: PeerID("prod"), batchID: "b", now: h.now))
        #expect(out.results.map(\.id) == ["b"])
        #expect(out.failures.isEmpty && out.rejections.isEmpty)
    }

    @Test func strayAcksAreAnsweredUnknownBatch() {
        var h = Harness()
        h.ready("w", credit: 0)
        h.submit("queued")
        let early = h.record(h.scheduler.ack(from: PeerID("prod"), batchID: "queued", now: h.now))
        #expect(early.rejections.map(\.code) == [.unknownBatch])
        #expect(h.scheduler.batchCount == 1)
        #expect(h.record(h.scheduler.ack(from: PeerID("prod"), batchID: "nope", now: h.now)).rejections.map(\.code) == [.unknownBatch])
        #expect(h.record(h.scheduler.ack(from: PeerID("other"), batchID: "queued", now: h.now)).rejections.map(\.code) == [.unknownBatch])
    }

    @Test func aConnectionSwitchingSessionsHoldsOne() {
        var h = Harness()
        for i in 0..<500 { h.record(h.scheduler.hello(from: PeerID("c"), session: "s\(i)", now: h.now)) }
        #expect(h.scheduler.snapshot(now: h.now).sessions.map(\.session) == ["s499"])
        // A session left holding a batch is kept until the batch is acknowledged or expires.
        h.submit("b", from: "c")
        h.record(h.scheduler.hello(from: PeerID("c"), session: "next", now: h.now))
        #expect(Set(h.scheduler.snapshot(now: h.now).sessions.map(\.session)) == ["s499", "next"])
    }

    @Test func statusListsAtMostTheLimitBusiestFirst() {
        var h = Harness { $0.maxQueuedBatches = 10_000 }
        let n = WireProtocol.maxStatusSessions + 200
        for i in 0..<n { h.record(h.scheduler.hello(from: PeerID("c\(i)"), session: "s\(i)", now: h.now)) }
        h.submit("x1", from: "c7")
        h.submit("x2", from: "c7")
        let snapshot = h.scheduler.snapshot(now: h.now)
        #expect(snapshot.sessions.count == WireProtocol.maxStatusSessions)
        #expect(snapshot.sessionsTotal == n)
        #expect(snapshot.sessions.contains { $0.session == "s7" && $0.outstanding == 2 })
    }
}
