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
}
