import CompassProtocol
import Testing
@testable import CompassScheduler

@Suite("Failures, retries and liveness")
struct FailureTests {
    @Test func silentWorkerIsDeclaredDeadAndItsBatchRequeuedAtTheFront() {
        var h = Harness()
        h.ready("w1", credit: 1)
        h.submit("first"); h.submit("second")
        #expect(h.log.dispatches.map(\.id) == ["first"])
        // w2 arrives but w1 still holds "first"; w2 takes "second".
        h.ready("w2", credit: 1)
        // Keep w2 alive while w1 stays silent past heartbeat 100 ms x liveness 3.
        var out: [SchedulerAction<[UInt8]>] = []
        for _ in 0..<4 {
            out += h.advance(100)
            h.record(h.scheduler.workerHeartbeat(PeerID("w2"), now: h.now))
        }
        #expect(out.events.contains { if case .workerLost(let w, _, _, 1) = $0 { return w.description == "w1" }; return false })
        #expect(h.scheduler.workerCount == 1)
        // w2 finishes "second": "first" goes to it next, as attempt 2.
        let next = h.result("w2", "second")
        #expect(next.dispatches.map { "\($0.id)#\($0.attempt)" } == ["first#2"])
    }

    @Test func staleResultOfALostWorkerIsDropped() {
        var h = Harness()
        h.ready("w1")
        h.submit("b")
        _ = h.advance(350) // w1 lost
        h.ready("w2")
        #expect(h.log.dispatches.map { "\($0.worker):\($0.attempt)" } == ["w1:1", "w2:2"])
        // w1 comes back from a pause and sends its old result: it is told to re-register, nothing is delivered.
        let late = h.result("w1", "b", attempt: 1)
        #expect(late.results.isEmpty)
        #expect(late.sent(to: "w1").contains { if case .disconnect = $0 { return true }; return false })
        // w2's result for attempt 2 is the one delivered, once.
        #expect(h.result("w2", "b", attempt: 2).results.map(\.id) == ["b"])
        #expect(h.log.results.count == 1)
    }

    @Test func staleAttemptFromAKnownWorkerIsDropped() {
        var h = Harness()
        h.ready("w1")
        h.submit("b")
        let out = h.result("w1", "b", attempt: 7)
        #expect(out.results.isEmpty)
        #expect(out.events.contains(.staleDropped(batchID: "b", worker: PeerID("w1"), attempt: 7)))
        #expect(h.scheduler.snapshot(now: h.now).pools[0].counters.staleDropped == 1)
    }

    @Test func attemptsAreBoundedByMaxAttempts() {
        var h = Harness()
        h.submit("b", maxAttempts: 2)
        h.ready("w1")
        h.failed("w1", "b", attempt: 1, code: .engineDead, retryable: true)
        #expect(h.log.failures.isEmpty)
        h.failed("w1", "b", attempt: 2, code: .engineDead, retryable: true)
        #expect(h.log.failures.map(\.code) == ["engine_dead"])
        #expect(h.log.dispatches.count == 2)
    }

    @Test func defaultMaxAttemptsIsThreeWhenWorkersKeepDying() {
        var h = Harness()
        h.submit("b")
        for i in 1...3 {
            h.ready("w\(i)")
            _ = h.advance(400)
        }
        #expect(h.log.dispatches.count == 3)
        #expect(h.log.failures.map(\.code) == ["worker_lost"])
    }

    @Test func nonRetryableFailureIsFinalAtOnce() {
        var h = Harness()
        h.ready("w")
        h.submit("b")
        h.failed("w", "b", code: .badRequest, retryable: false)
        #expect(h.log.failures.map(\.code) == ["bad_request"])
        #expect(h.log.dispatches.count == 1)
    }

    @Test func handedBackBatchDoesNotUseAnAttempt() {
        var h = Harness()
        h.submit("b", maxAttempts: 1)
        h.ready("w1")
        // A draining worker says BYE, then gives back what it has not started.
        h.record(h.scheduler.workerBye(PeerID("w1"), reason: "SIGTERM", now: h.now))
        h.failed("w1", "b", code: .handedBack, retryable: true)
        #expect(h.scheduler.workerCount == 0)
        h.ready("w2")
        #expect(h.log.failures.isEmpty)
        #expect(h.log.dispatches.map(\.worker).last == "w2")
        h.result("w2", "b", attempt: 2)
        #expect(h.log.results.map(\.id) == ["b"])
        // The hand-back was no attempt: the producer hears of one.
        #expect(h.log.compactMap { if case .toProducer(_, .result(_, let attempts, _, _)) = $0 { return attempts }; return nil } == [UInt32(1)])
    }

    @Test("handed_back from a worker that is not draining is charged: no endless re-dispatch, attempts within max_attempts")
    func handedBackWithoutByeIsCharged() {
        var h = Harness()
        h.submit("b", maxAttempts: 3)
        h.ready("w1")
        // A worker that never said BYE keeps handing the batch back. Each answer returns its credit,
        // so it gets the batch again at once: without a charge this would never end.
        var rounds = 0
        while let last = h.log.dispatches.last, h.log.failures.isEmpty, rounds < 100 {
            h.failed("w1", "b", attempt: last.attempt, code: .handedBack, retryable: true)
            rounds += 1
        }
        #expect(rounds == 3)
        #expect(h.log.dispatches.count == 3)
        #expect(h.log.failures.map(\.code) == ["handed_back"])
        let attempts = h.log.compactMap { if case .toProducer(_, .failed(_, let attempts, _, _, _)) = $0 { return attempts }; return nil }
        #expect(attempts == [UInt32(3)])
        // The worker itself is still registered and served (a failure, not a drain).
        h.submit("c")
        #expect(h.log.dispatches.last?.id == "c")
    }

    @Test func heartbeatsGoToEveryWorkerEachInterval() {
        var h = Harness()
        h.ready("w1"); h.ready("w2")
        let out = h.advance(100)
        #expect(out.sent(to: "w1").count == 1)
        #expect(out.sent(to: "w2").count == 1)
        #expect(h.advance(50).isEmpty)
    }

    @Test func aDroppedConnectionProbesEveryWorkerAtOnceAndTheGoneOneLosesItsBatch() {
        var h = Harness()
        h.ready("w1"); h.ready("w2")
        h.submit("b")
        let probe = h.record(h.scheduler.probeWorkers(now: h.now))
        #expect(probe.sent(to: "w1").count == 1 && probe.sent(to: "w2").count == 1)
        // The broker's send to the worker holding "b" fails: it is lost and "b" runs elsewhere.
        let holder = h.log.dispatches.first!.worker
        let other = holder == "w1" ? "w2" : "w1"
        let lost = h.record(h.scheduler.workerUnreachable(PeerID(holder), now: h.now))
        #expect(lost.sent(to: other).contains { if case .batch(let id, _, _, _) = $0 { return id == "b" }; return false })
    }

    @Test func unknownWorkerIsToldToRegister() {
        var h = Harness()
        let out = h.record(h.scheduler.workerHeartbeat(PeerID("ghost"), now: h.now))
        #expect(out.sent(to: "ghost").contains { if case .disconnect = $0 { return true }; return false })
    }

    @Test func reRegistrationRequeuesWhatTheOldIncarnationHeld() {
        var h = Harness()
        h.ready("w")
        h.submit("b")
        let out = h.ready("w")
        #expect(out.dispatches.map(\.attempt) == [2])
    }

    @Test func unreachableWorkerIsLostAtOnce() {
        var h = Harness()
        h.ready("w1"); h.ready("w2", credit: 0)
        h.submit("b")
        h.record(h.scheduler.workerUnreachable(PeerID("w1"), now: h.now))
        h.record(h.scheduler.workerCredit(PeerID("w2"), 1, now: h.now))
        #expect(h.log.dispatches.map(\.worker) == ["w1", "w2"])
    }

    @Test func drainingWorkerGetsNothingNewAndLeavesWhenDone() {
        var h = Harness()
        h.ready("w1", credit: 2)
        h.submit("a")
        h.record(h.scheduler.workerBye(PeerID("w1"), reason: "SIGTERM", now: h.now))
        h.submit("b")
        #expect(h.log.dispatches.map(\.id) == ["a"])
        let out = h.result("w1", "a")
        #expect(out.events.contains(.workerLeft(worker: PeerID("w1"), pool: "p")))
        #expect(h.scheduler.workerCount == 0)
        h.ready("w2")
        #expect(h.log.dispatches.map(\.id) == ["a", "b"])
    }

    @Test func drainThatTakesTooLongIsTakenBack() {
        var h = Harness { $0.drainMilliseconds = 200 }
        h.ready("w1")
        h.submit("a")
        h.record(h.scheduler.workerBye(PeerID("w1"), reason: "SIGTERM", now: h.now))
        for _ in 0..<3 {
            _ = h.advance(90)
            h.record(h.scheduler.workerHeartbeat(PeerID("w1"), now: h.now))
        }
        #expect(h.scheduler.workerCount == 0)
        h.ready("w2")
        #expect(h.log.dispatches.map(\.worker) == ["w1", "w2"])
    }
}
