import CompassProtocol
import Testing
@testable import CompassScheduler

@Suite("Producers: idempotency, sessions, backpressure, fairness, cancel, deadlines")
struct ProducerTests {
    @Test func resubmitOfAQueuedBatchIsConfirmedNotDuplicated() {
        var h = Harness()
        h.submit("b")
        #expect(h.submit("b").accepted == ["b"])
        h.ready("w", credit: 5)
        #expect(h.log.dispatches.count == 1)
    }

    @Test func resubmitOfAFinishedBatchResendsItsResult() {
        var h = Harness()
        h.ready("w")
        h.submit("b")
        h.result("w", "b")
        let again = h.submit("b")
        #expect(again.accepted == ["b"])
        #expect(again.results.map(\.id) == ["b"])
        #expect(h.log.dispatches.count == 1)
    }

    @Test func batchIDOfAnotherSessionIsRefused() {
        var h = Harness()
        h.submit("b", from: "alice")
        #expect(h.submit("b", from: "bob").rejections.map(\.code) == [.duplicate])
    }

    @Test func ackForgetsAndALaterDuplicateIsRefused() {
        var h = Harness()
        h.ready("w")
        h.submit("b")
        h.result("w", "b")
        h.record(h.scheduler.ack(from: PeerID("prod"), batchID: "b", now: h.now))
        #expect(h.scheduler.batchCount == 0)
        #expect(h.submit("b").rejections.map(\.code) == [.duplicate])
    }

    @Test func helloReplaysUnackedResultsToTheNewConnection() {
        var h = Harness()
        h.record(h.scheduler.hello(from: PeerID("conn1"), session: "s", now: h.now))
        h.ready("w", credit: 2)
        h.submit("a", from: "conn1"); h.submit("b", from: "conn1")
        h.result("w", "a")
        h.record(h.scheduler.ack(from: PeerID("conn1"), batchID: "a", now: h.now))
        // conn1 vanishes before b completes.
        h.scheduler.producerUnreachable(PeerID("conn1"))
        let lost = h.result("w", "b")
        #expect(lost.results.isEmpty)
        let replay = h.record(h.scheduler.hello(from: PeerID("conn2"), session: "s", now: h.now))
        #expect(replay.results.map { "\($0.route):\($0.id)" } == ["conn2:b"])
        if case .toProducer(_, .welcome(_, let pending)) = replay.first! { #expect(pending == 1) } else { Issue.record("no welcome first") }
    }

    @Test func fullPoolSaysBusyWithARetryHint() {
        var h = Harness { $0.maxPoolBytes = 100; $0.maxSessionBytes = 100 }
        #expect(h.submit("a", bytes: 60).accepted == ["a"])
        let out = h.submit("b", bytes: 60)
        #expect(out.rejections.map(\.code) == [.busy])
        #expect(out.rejections.first!.retryAfter > 0)
        h.ready("w")
        h.result("w", "a")
        // The unacked result still holds bytes: the pool stays full until the producer ACKs.
        #expect(h.submit("b", bytes: 60).rejections.map(\.code) == [.busy])
        h.record(h.scheduler.ack(from: PeerID("prod"), batchID: "a", now: h.now))
        #expect(h.submit("b", bytes: 60).accepted == ["b"])
    }

    @Test func queueLengthIsBounded() {
        var h = Harness { $0.maxQueuedBatches = 2 }
        h.submit("a"); h.submit("b")
        #expect(h.submit("c").rejections.map(\.code) == [.busy])
    }

    @Test func oversizedPayloadIsTooLarge() {
        var h = Harness { $0.maxPoolBytes = 100 }
        #expect(h.submit("a", bytes: 101).rejections.map(\.code) == [.tooLarge])
    }

    @Test func twoProducersShareAPoolRoundRobin() {
        var h = Harness()
        for i in 0..<6 { h.submit("big\(i)", from: "big") }
        for i in 0..<2 { h.submit("small\(i)", from: "small") }
        h.ready("w", credit: 8)
        #expect(h.log.dispatches.map(\.id) == ["big0", "small0", "big1", "small1", "big2", "big3", "big4", "big5"])
    }

    @Test func higherPriorityGoesFirst() {
        var h = Harness()
        h.submit("low", priority: 0)
        h.submit("high", priority: 5)
        h.submit("mid", priority: 2)
        h.ready("w", credit: 3)
        #expect(h.log.dispatches.map(\.id) == ["high", "mid", "low"])
    }

    @Test func cancelOfAQueuedBatchFailsItOnce() {
        var h = Harness()
        h.submit("b")
        let out = h.record(h.scheduler.cancel(from: PeerID("prod"), batchID: "b", now: h.now))
        #expect(out.failures.map(\.code) == ["cancelled"])
        h.ready("w")
        #expect(h.log.dispatches.isEmpty)
    }

    @Test func cancelOfARunningBatchTellsTheWorkerAndDropsItsLateResult() {
        var h = Harness()
        h.ready("w")
        h.submit("b")
        let out = h.record(h.scheduler.cancel(from: PeerID("prod"), batchID: "b", now: h.now))
        #expect(out.sent(to: "w").contains { if case .cancel("b", 1) = $0 { return true }; return false })
        #expect(out.failures.map(\.code) == ["cancelled"])
        #expect(h.result("w", "b").results.isEmpty)
        // The worker's credit came back with its late result.
        h.submit("c")
        #expect(h.log.dispatches.map(\.id) == ["b", "c"])
    }

    @Test func cancelOfAnUnknownBatchIsRejected() {
        var h = Harness()
        let out = h.record(h.scheduler.cancel(from: PeerID("prod"), batchID: "zzz", now: h.now))
        #expect(out.rejections.map(\.code) == [.unknownBatch])
    }

    @Test func deadlineFailsAQueuedBatchAsTimeout() {
        var h = Harness()
        h.submit("b", deadline: 250)
        _ = h.advance(200)
        #expect(h.log.failures.isEmpty)
        _ = h.advance(100)
        #expect(h.log.failures.map(\.code) == ["timeout"])
    }

    @Test func deadlineCancelsARunningBatch() {
        var h = Harness()
        h.ready("w")
        h.submit("b", deadline: 150)
        let out = h.advance(80) + h.record(h.scheduler.workerHeartbeat(PeerID("w"), now: h.now)) + h.advance(80)
        #expect(out.sent(to: "w").contains { if case .cancel("b", 1) = $0 { return true }; return false })
        #expect(h.log.failures.map(\.code) == ["timeout"])
    }

    @Test func leaseTakesBackABatchFromAWorkerThatHeartbeatsButNeverFinishes() {
        var h = Harness { $0.leaseMilliseconds = 250 }
        h.ready("w1")
        h.submit("b")
        for _ in 0..<3 {
            _ = h.advance(90)
            h.record(h.scheduler.workerHeartbeat(PeerID("w1"), now: h.now))
        }
        #expect(h.log.sent(to: "w1").contains { if case .cancel("b", 1) = $0 { return true }; return false })
        h.ready("w2")
        #expect(h.log.dispatches.map { "\($0.worker):\($0.attempt)" } == ["w1:1", "w2:2"])
    }

    @Test func unackedResultsExpireAfterRetention() {
        var h = Harness { $0.resultRetentionMilliseconds = 1000 }
        h.ready("w")
        h.submit("b")
        h.result("w", "b")
        var out: [SchedulerAction<[UInt8]>] = []
        for _ in 0..<11 {
            out += h.advance(100)
            h.record(h.scheduler.workerHeartbeat(PeerID("w"), now: h.now))
        }
        #expect(out.events.contains(.resultExpired(batchID: "b", session: "anon:prod")))
        #expect(h.scheduler.batchCount == 0)
    }

    @Test func shutdownRefusesNewBatches() {
        var h = Harness()
        h.scheduler.stopAccepting()
        #expect(h.submit("b").rejections.map(\.code) == [.shuttingDown])
    }
}

@Suite("Sessions across reconnects")
struct SessionBindingTests {
    @Test("A SUBMIT that reaches a restarted broker before its HELLO is delivered to the session")
    func submitBeforeHelloJoinsTheSession() {
        var h = Harness()
        h.ready("w")
        // The reconnecting socket flushes its queued SUBMIT first, then says HELLO.
        h.submit("b1", from: "conn")
        h.record(h.scheduler.hello(from: PeerID("conn"), session: "sess", now: h.now))
        let out = h.result("w", "b1")
        #expect(out.results.map { "\($0.route):\($0.id)" } == ["conn:b1"])
        // Its re-SUBMIT (the client saw the new broker id) is the same batch, not a duplicate.
        #expect(h.submit("b1", from: "conn").rejections.isEmpty)
        // And a later connection of the session gets it replayed.
        h.scheduler.producerUnreachable(PeerID("conn"))
        let replay = h.record(h.scheduler.hello(from: PeerID("conn2"), session: "sess", now: h.now))
        #expect(replay.results.map(\.id) == ["b1"])
    }

    @Test("A connection that has not said HELLO re-submitting a named session's batch is refused; after HELLO it is the session's")
    func resubmitBeforeHelloIsRefusedUntilHello() {
        var h = Harness()
        h.record(h.scheduler.hello(from: PeerID("old"), session: "sess", now: h.now))
        h.submit("b1", from: "old")
        h.scheduler.producerUnreachable(PeerID("old"))
        // The reconnected socket flushed its queued SUBMIT before its HELLO.
        let early = h.submit("b1", from: "new")
        #expect(early.rejections.map(\.code) == [.sessionRequired])
        #expect(early.accepted.isEmpty)
        h.ready("w")
        #expect(h.result("w", "b1").results.isEmpty)  // nobody of the session is connected
        let hello = h.record(h.scheduler.hello(from: PeerID("new"), session: "sess", now: h.now))
        #expect(hello.results.map { "\($0.route):\($0.id)" } == ["new:b1"])
        let again = h.submit("b1", from: "new")
        #expect(again.accepted == ["b1"] && again.rejections.isEmpty)
        h.record(h.scheduler.ack(from: PeerID("new"), batchID: "b1", now: h.now))
        #expect(h.scheduler.batchCount == 0)
    }

    @Test("A connection without HELLO cannot collect, ACK or cancel a batch of a connected session")
    func noTheftOfANamedSessionsBatch() {
        var h = Harness()
        h.record(h.scheduler.hello(from: PeerID("owner"), session: "sess", now: h.now))
        h.submit("running", from: "owner")
        h.submit("done", from: "owner")
        h.ready("w", credit: 1)
        // The thief re-submits both ids, ACKs and cancels them.
        let steal = h.submit("running", from: "thief") + h.submit("done", from: "thief")
        #expect(steal.rejections.map(\.code) == [.sessionRequired, .sessionRequired])
        h.record(h.scheduler.ack(from: PeerID("thief"), batchID: "running", now: h.now))
        let cancel = h.record(h.scheduler.cancel(from: PeerID("thief"), batchID: "done", now: h.now))
        #expect(cancel.rejections.map(\.code) == [.unknownBatch])
        #expect(cancel.failures.isEmpty)
        // Results go to the owner only; the thief's ACK changed nothing.
        var out = h.result("w", "running")
        out += h.result("w", "done", attempt: 1)
        #expect(out.results.map { "\($0.route):\($0.id)" } == ["owner:running", "owner:done"])
        h.record(h.scheduler.ack(from: PeerID("thief"), batchID: "done", now: h.now))
        #expect(h.scheduler.batchCount == 2)
        // Another named session gets `duplicate` and nothing else.
        h.record(h.scheduler.hello(from: PeerID("other"), session: "other", now: h.now))
        let named = h.submit("done", from: "other")
        #expect(named.rejections.map(\.code) == [.duplicate] && named.results.isEmpty)
        // The owner still has both, once each, on its HELLO.
        let replay = h.record(h.scheduler.hello(from: PeerID("owner2"), session: "sess", now: h.now))
        #expect(replay.results.map(\.id) == ["done", "running"])
    }

    @Test("A session claims a batch of a connection that never said HELLO only with the same payload")
    func claimingAnAnonymousBatchNeedsItsPayload() {
        var h = Harness()
        h.submit("b", from: "anon1", bytes: 10)
        h.record(h.scheduler.hello(from: PeerID("guess"), session: "guesser", now: h.now))
        #expect(h.submit("b", from: "guess", bytes: 11).rejections.map(\.code) == [.duplicate])
        // The owner reconnected with a new socket, said HELLO, and re-sends what it awaits.
        h.record(h.scheduler.hello(from: PeerID("anon1-again"), session: "owner", now: h.now))
        #expect(h.submit("b", from: "anon1-again", bytes: 10).accepted == ["b"])
        h.ready("w")
        #expect(h.result("w", "b").results.map { "\($0.route):\($0.id)" } == ["anon1-again:b"])
    }

    @Test("A HELLO on the connection that submitted before its binding was lost takes its batches")
    func helloOnTheSameConnectionAdoptsItsAnonymousBatches() {
        var h = Harness()
        h.submit("b", from: "conn")
        h.scheduler.producerUnreachable(PeerID("conn"))  // a send failed while libzmq reconnected it
        h.record(h.scheduler.hello(from: PeerID("conn"), session: "s", now: h.now))
        h.ready("w")
        #expect(h.result("w", "b").results.map { "\($0.route):\($0.id)" } == ["conn:b"])
        #expect(h.scheduler.snapshot(now: h.now).sessions.map(\.session) == ["s"])
    }

    @Test("Another named session's batch id is still refused")
    func namedSessionsStayApart() {
        var h = Harness()
        h.record(h.scheduler.hello(from: PeerID("a"), session: "alice", now: h.now))
        h.record(h.scheduler.hello(from: PeerID("b"), session: "bob", now: h.now))
        h.submit("x", from: "a")
        #expect(h.submit("x", from: "b").rejections.map(\.code) == [.duplicate])
    }

    @Test func aSilentSessionThatHoldsNothingIsForgottenOneThatHoldsAResultIsKept() {
        var h = Harness { $0.idleSessionMilliseconds = 10_000 }
        func names() -> [String] { h.scheduler.snapshot(now: h.now).sessions.map(\.session) }
        // `compass status` says HELLO and exits; a live producer heartbeats; a third holds a result.
        h.record(h.scheduler.hello(from: PeerID("status"), session: "gone", now: h.now))
        h.record(h.scheduler.hello(from: PeerID("live"), session: "live", now: h.now))
        h.record(h.scheduler.hello(from: PeerID("holder"), session: "holder", now: h.now))
        h.ready("w")
        h.submit("b", from: "holder")
        h.result("w", "b")
        for _ in 0..<3 {
            _ = h.advance(3_000)
            h.record(h.scheduler.producerHeartbeat(from: PeerID("live"), now: h.now))
        }
        #expect(names() == ["gone", "holder", "live"])  // 9 s: nobody is past the limit yet
        _ = h.advance(3_000)
        h.record(h.scheduler.producerHeartbeat(from: PeerID("live"), now: h.now))
        #expect(names() == ["holder", "live"])          // 12 s: the silent one that held nothing is gone
        // The holder's result is still delivered on its ACK; then it holds nothing and, silent, goes.
        h.record(h.scheduler.ack(from: PeerID("holder"), batchID: "b", now: h.now))
        #expect(h.scheduler.batchCount == 0)
        _ = h.advance(10_500)
        #expect(names() == [])
        // A forgotten producer that comes back starts its session again with HELLO.
        let welcome = h.record(h.scheduler.hello(from: PeerID("live"), session: "live", now: h.now))
        if case .toProducer(_, .welcome(let session, let pending)) = welcome.first! {
            #expect(session == "live" && pending == 0)
        } else { Issue.record("no welcome") }
        #expect(names() == ["live"])
    }

    @Test func aForgottenSessionThatSubmitsAgainAndReconnectsKeepsItsBatch() {
        var h = Harness { $0.idleSessionMilliseconds = 10_000 }
        h.record(h.scheduler.hello(from: PeerID("conn1"), session: "s", now: h.now))
        _ = h.advance(11_000)  // suspended: silent past the limit while it held nothing
        #expect(h.scheduler.snapshot(now: h.now).sessions.isEmpty)
        h.submit("b", from: "conn1")  // resumed: its SUBMIT lands in an anonymous session
        // It reconnects, says HELLO and re-submits what it awaits, as the protocol says.
        h.record(h.scheduler.hello(from: PeerID("conn2"), session: "s", now: h.now))
        #expect(h.submit("b", from: "conn2").accepted == ["b"])
        h.ready("w")
        let done = h.result("w", "b")
        #expect(done.results.map { "\($0.route):\($0.id)" } == ["conn2:b"])
        #expect(h.scheduler.snapshot(now: h.now).sessions.map(\.session) == ["s"])
    }
}
