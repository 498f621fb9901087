import CompassProtocol
import Testing
@testable import CompassScheduler

@Suite("Credit modes: implicit (results return credit) and explicit (the worker grants every slot)")
struct CreditModeTests {
    func credit(_ h: Harness, _ worker: String) -> Int? {
        h.scheduler.snapshot(now: h.now).workers.first { $0.id == worker }?.credit
    }

    @Test func welcomeSaysTheModeTheReadyAskedFor() {
        var h = Harness()
        let implicit = h.ready("old", credit: 1)
        let explicit = h.ready("new", credit: 1, creditMode: .explicit)
        #expect(implicit.sent(to: "old").contains { if case .welcome(_, .implicit) = $0 { return true }; return false })
        #expect(explicit.sent(to: "new").contains { if case .welcome(_, .explicit) = $0 { return true }; return false })
    }

    @Test func aResultReturnsCreditOnlyToAnImplicitWorker() {
        var h = Harness()
        h.ready("old", credit: 1)
        h.ready("new", credit: 1, creditMode: .explicit)
        h.submit("a")
        h.submit("b")
        let placed = Dictionary(uniqueKeysWithValues: h.log.dispatches.map { ($0.id, $0.worker) })
        #expect(Set(placed.values) == ["old", "new"])
        h.result(placed["a"]!, "a")
        h.result(placed["b"]!, "b")
        #expect(credit(h, "old") == 1, "implicit: the result returned the credit")
        #expect(credit(h, "new") == 0, "explicit: nothing comes back by itself")
        h.submit("c")
        #expect(h.log.dispatches.last?.worker == "old", "only the worker with credit gets the next batch")
        h.credit("new", 3)
        #expect(credit(h, "new") == 3)
    }

    @Test func explicitCreditShrinksWhenTheWorkerStopsGranting() {
        var h = Harness()
        h.ready("w", credit: 4, creditMode: .explicit)
        for i in 0..<6 { h.submit("b\(i)") }
        #expect(h.log.dispatches.count == 4)
        for i in 0..<4 { h.result("w", "b\(i)") }
        #expect(h.log.dispatches.count == 4, "no grant, no batch: the window shrank to nothing")
        h.credit("w", 1)
        #expect(h.log.dispatches.count == 5)
        #expect(credit(h, "w") == 0)
    }

    @Test func aFailureReturnsNoCreditToAnExplicitWorkerButStillRequeues() {
        var h = Harness()
        h.ready("w", credit: 1, creditMode: .explicit)
        h.submit("a")
        h.failed("w", "a", code: .engineDead, retryable: true)
        #expect(credit(h, "w") == 0)
        #expect(h.log.dispatches.count == 1, "requeued, waiting for a grant")
        h.credit("w", 1)
        #expect(h.log.dispatches.map(\.attempt) == [1, 2])
    }

    @Test func creditIsCappedAtTheProtocolsLimitInBothModes() {
        var h = Harness()
        h.ready("w", credit: 5_000, creditMode: .explicit)
        #expect(credit(h, "w") == WireProtocol.maxCredit)
        h.credit("w", 10)
        #expect(credit(h, "w") == WireProtocol.maxCredit)
        #expect(SchedulerConfig().maxCredit == WireProtocol.maxCredit, "the scheduler's default cap is the protocol's")
    }
}
