import CompassProtocol
import Testing
@testable import CompassScheduler

@Suite("Dispatch by credit")
struct DispatchTests {
    @Test("A pool no worker has joined is unknown_pool with a retry hint and the known pools; a worker joining makes it accept")
    func unknownPoolIsRejectedWithAHint() {
        var h = Harness()
        let out = h.submit("b1", pool: "nope")
        #expect(out.rejections.map(\.code) == [.unknownPool])
        #expect(out.rejections.first!.retryAfter > 0)
        let message = out.compactMap { if case .toProducer(_, .rejected(_, _, let m, _)) = $0 { return m }; return nil }.first ?? ""
        #expect(message.contains("'nope'") && message.contains("known pools: p"))
        #expect(h.scheduler.batchCount == 0)
        h.ready("w", pool: "nope")
        #expect(h.submit("b1", pool: "nope").accepted == ["b1"])
    }

    @Test func invalidPoolNameIsRejectedForGood() {
        var h = Harness()
        let out = h.submit("b1", pool: "has space")
        #expect(out.rejections.map(\.code) == [.unknownPool])
        #expect(out.rejections.first!.retryAfter == 0)
    }

    @Test func batchWaitsForAWorkerThenDispatchesAtOnce() {
        var h = Harness()
        #expect(h.submit("b1").accepted == ["b1"])
        #expect(h.log.dispatches.isEmpty)
        let out = h.ready("w1")
        #expect(out.sent(to: "w1").count == 2) // WELCOME then BATCH
        #expect(out.dispatches.map(\.id) == ["b1"])
        #expect(out.dispatches.map(\.attempt) == [1])
    }

    @Test func creditBoundsWhatAWorkerHolds() {
        var h = Harness()
        h.ready("w1", credit: 2)
        for i in 0..<5 { h.submit("b\(i)") }
        #expect(h.log.dispatches.map(\.id) == ["b0", "b1"])
        let out = h.result("w1", "b0")
        #expect(out.dispatches.map(\.id) == ["b2"])
        #expect(out.results.map(\.id) == ["b0"])
    }

    @Test func explicitCreditGrantsMore() {
        var h = Harness()
        h.ready("w1", credit: 0)
        h.submit("b0"); h.submit("b1")
        #expect(h.log.dispatches.isEmpty)
        let out = h.record(h.scheduler.workerCredit(PeerID("w1"), 2, now: h.now))
        #expect(out.dispatches.map(\.id) == ["b0", "b1"])
    }

    @Test func workersAreServedRoundRobin() {
        var h = Harness()
        h.ready("w1", credit: 2)
        h.ready("w2", credit: 2)
        for i in 0..<4 { h.submit("b\(i)") }
        #expect(h.log.dispatches.map(\.worker) == ["w1", "w2", "w1", "w2"])
    }

    @Test func poolsAreSeparate() {
        var h = Harness { $0.declaredPools = ["a", "b"] }
        h.ready("wa", pool: "a")
        h.submit("x", pool: "b")
        #expect(h.log.dispatches.isEmpty)
        h.ready("wb", pool: "b")
        #expect(h.log.dispatches.map(\.worker) == ["wb"])
    }

    @Test func aWorkerMakesItsPoolKnown() {
        var h = Harness { $0.declaredPools = [] }
        #expect(h.submit("b1", pool: "dyn").rejections.map(\.code) == [.unknownPool])
        h.ready("w", pool: "dyn")
        #expect(h.submit("b2", pool: "dyn").accepted == ["b2"])
    }

    @Test func resultGoesToTheSubmittingProducer() {
        var h = Harness()
        h.ready("w1", credit: 2)
        h.submit("a", from: "alice")
        h.submit("b", from: "bob")
        let out = h.result("w1", "b") + h.result("w1", "a")
        #expect(out.results.map(\.route) == ["bob", "alice"])
    }

    @Test func requestCountsAreTracked() {
        var h = Harness()
        h.submit("b", requests: 16)
        #expect(h.scheduler.snapshot(now: h.now).pools[0].queuedRequests == 16)
        h.ready("w")
        h.result("w", "b")
        #expect(h.scheduler.snapshot(now: h.now).pools[0].counters.completedRequests == 16)
    }

    @Test("Only an answer to a dispatch the worker owes returns credit: not an unknown batch, a duplicate, or another worker's batch")
    func creditIsNotInflatedByBogusAnswers() {
        var h = Harness()
        h.ready("w1", credit: 1)
        h.ready("w2", credit: 1)
        for i in 0..<5 { h.submit("b\(i)") }
        #expect(h.log.dispatches.map { "\($0.worker):\($0.id)" } == ["w1:b0", "w2:b1"])
        h.result("w1", "nope")      // no such batch
        h.result("w1", "b1")        // w2's batch
        h.result("w1", "b0", attempt: 7)  // an attempt never made
        #expect(h.log.dispatches.count == 2)
        h.result("w1", "b0")        // its own: one credit, one more batch
        #expect(h.log.dispatches.count == 3)
        h.result("w1", "b0")        // the same answer again: nothing
        #expect(h.log.dispatches.count == 3)
        #expect(h.scheduler.snapshot(now: h.now).workers.map(\.credit) == [0, 0])
    }

    @Test("A worker that reconnects under a new id and answers what it ran before gets that credit back; another process does not")
    func aReconnectedWorkersLateAnswerReturnsItsCredit() {
        var h = Harness()
        h.ready("w-1", credit: 1, process: "gpu7:42")
        h.submit("a"); h.submit("b")
        // The broker loses w-1 (silent); it reconnects as w-2 and, still running "a", offers credit 0.
        h.record(h.scheduler.workerUnreachable(PeerID("w-1"), now: h.now))
        h.ready("w-2", credit: 0, process: "gpu7:42")
        // Another worker naming the dispatch it did not own gains nothing.
        h.ready("other", credit: 0, process: "gpu8:7")
        h.result("other", "a", attempt: 1)
        #expect(h.log.dispatches.count == 1)
        #expect(h.log.dispatches.map { "\($0.worker):\($0.id)" } == ["w-1:a"])
        h.result("w-2", "a", attempt: 1)  // stale (attempt 1 was given up on), but owed
        #expect(h.log.dispatches.map { "\($0.worker):\($0.id):\($0.attempt)" } == ["w-1:a:1", "w-2:a:2"])
        h.result("w-2", "a", attempt: 1)  // once only
        #expect(h.log.dispatches.count == 2)
    }
}

@Suite("Action arrays handed back")
struct ActionRecycleTests {
    @Test("A recycled array's storage takes the next call's actions, and only those")
    func recycledStorageIsReused() {
        var h = Harness()
        h.ready("w1", credit: 4)
        var first = h.submit("b1")
        #expect(first.accepted == ["b1"] && first.dispatches.map(\.id) == ["b1"])
        let storage = first.withUnsafeBufferPointer { $0.baseAddress }
        h.scheduler.recycle(&first)
        #expect(first.isEmpty)
        let second = h.submit("b2")
        #expect(second.accepted == ["b2"] && second.dispatches.map(\.id) == ["b2"])
        #expect(second.withUnsafeBufferPointer { $0.baseAddress } == storage)
    }

    @Test("Handing back is optional, and a large array is let go rather than kept")
    func largeArraysAreNotKept() {
        var h = Harness()
        h.ready("w1", credit: 4)
        #expect(h.submit("b1").accepted == ["b1"]) // not handed back: the next call has its own
        #expect(h.submit("b2").accepted == ["b2"])
        var big = h.submit("b3")
        big.reserveCapacity(1000)
        let storage = big.withUnsafeBufferPointer { $0.baseAddress }
        h.scheduler.recycle(&big)
        #expect(!big.isEmpty) // untouched
        let next = h.submit("b4")
        #expect(next.accepted == ["b4"])
        #expect(next.withUnsafeBufferPointer { $0.baseAddress } != storage)
    }
}
