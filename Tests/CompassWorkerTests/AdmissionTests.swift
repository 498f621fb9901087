import CompassEngines
import CompassProtocol
import Testing
@testable import CompassWorker

@Suite("Worker state machine: admission by the engine's capacity, credit by requests")
struct AdmissionTests {
    /// A worker in front of an engine of 8 sequences, queue 0 and read-ahead 4, registered with
    /// explicit credit.
    func capacityEight() -> Harness {
        var h = Harness { $0.engineQueue = 0; $0.readAhead = 4 }
        h.startReady(EngineCapacity(sequences: 8))
        h.welcome(.explicit)
        return h
    }

    @Test func oneRequestBatchesFillTheEngineAcrossBatchBoundaries() {
        var h = capacityEight()
        // Before any batch, the worker expects batches as large as the engine: READY's two are plenty.
        #expect(h.machine.outstanding == 2)
        let first = h.batch("b0")
        #expect(first.submitted == ["b0"])
        // One-request batches: 8 in the engine plus 4 held, less what is here and on its way.
        #expect(first.credits == [10], "\(first.credits)")
        var inside: [String] = ["b0"]
        for i in 1..<11 { inside += h.batch("b\(i)").submitted }
        #expect(inside == (0..<8).map { "b\($0)" }, "eight batches run at once: as many as the engine has sequences")
        #expect(h.machine.held.map(\.batchID) == ["b8", "b9", "b10"])
        #expect(h.machine.outstanding == 1, "one more on its way: 8 inside + 3 held + 1 = 12")
        // A batch that ends frees one slot: the next held batch goes in at once, and one more is asked for.
        let done = h.finish("b3")
        #expect(done.results == ["b3"] && done.submitted == ["b8"])
        #expect(done.credits == [1])
        #expect(h.machine.inEngineRequests == 8)
    }

    @Test func theSameStreamInABatchEngineRunsOneBatchAtATime() {
        var h = Harness()
        h.startReady()
        h.welcome(.explicit)
        #expect(h.batch("b0").submitted == ["b0"])
        #expect(h.batch("b1").submitted.isEmpty, "a batch engine gets the next batch only when the last one ends")
        #expect(h.finish("b0").submitted == ["b1"])
    }

    @Test func aLargeBatchGoesInWhileTheEngineIsBelowCapacityAndProgressMakesRoom() {
        var h = capacityEight()
        #expect(h.batch("big", requests: 20).submitted == ["big"], "larger than the engine: in at once, the engine queues the rest")
        #expect(h.machine.inEngineRequests == 20)
        #expect(h.batch("next", requests: 2).submitted.isEmpty, "the engine is past its capacity")
        #expect(h.progress("big", done: 10, total: 20).submitted.isEmpty, "10 left: still past capacity")
        let room = h.progress("big", done: 13, total: 20)
        #expect(room.submitted == ["next"], "7 left of the big batch: below capacity, the next batch joins it")
        #expect(h.machine.inEngineRequests == 9)
        // The worker keeps one batch on its way while large ones fill the engine.
        #expect(h.machine.outstanding >= 1 || !h.machine.held.isEmpty)
    }

    @Test func creditFollowsTheSizeOfTheBatchesTheBrokerSends() {
        var h = capacityEight()
        for i in 0..<11 { h.batch("s\(i)") }
        #expect(h.machine.outstanding == 1)
        // From now on the broker has batches of 8 requests only, and sends one per credit. Were
        // the worker still counting on one-request batches, each finished request would ask for
        // another whole batch and the worker would hoard them.
        var large = 0
        for _ in 0..<16 {
            while h.machine.outstanding > 0 {
                h.batch("L\(large)", requests: 8)
                large += 1
            }
            h.finish(h.machine.running[0].batchID)
            #expect(h.machine.heldRequests + h.machine.inEngineRequests <= 12 + 2 * 8,
                    "held \(h.machine.heldRequests) + inside \(h.machine.inEngineRequests)")
        }
        #expect(h.machine.batchSizeEstimate > 4, "\(h.machine.batchSizeEstimate)")
        #expect(large <= 6, "took \(large) large batches for 16 finished ones")
    }

    @Test func theEngineQueueAdmitsPastCapacity() {
        var h = Harness { $0.engineQueue = 2; $0.readAhead = 2 }
        h.startReady(EngineCapacity(sequences: 4))
        h.welcome(.explicit)
        var inside: [String] = []
        for i in 0..<8 { inside += h.batch("q\(i)").submitted }
        #expect(inside.count == 6, "4 running and 2 queued in the engine: \(inside)")
        #expect(h.machine.held.count == 2)
    }

    @Test func theEngineQueueIsTheCapacityByDefault() {
        // Requests of equal length end together: a whole engine's worth waits inside it by default.
        var h = Harness { $0.readAhead = 2 }
        h.startReady(EngineCapacity(sequences: 4))
        h.welcome(.explicit)
        #expect(h.machine.engineQueue == 4)
        var inside: [String] = []
        for i in 0..<10 { inside += h.batch("d\(i)").submitted }
        #expect(inside.count == 8, "4 running and 4 queued in the engine: \(inside)")
        // Without a sequence capacity there is no queue to speak of (admission is by batches).
        var batches = Harness()
        batches.startReady(EngineCapacity(maxBatches: 1))
        #expect(batches.machine.engineQueue == 1)
    }

    @Test func noCreditWhileTheEngineIsDownAndTheHeldBatchesWaitForIt() {
        var h = capacityEight()
        for i in 0..<11 { h.batch("b\(i)") }
        let died = h.step { m, t in m.engineDied(code: .engineDead, message: "segfault", now: t) }
        #expect(died.failures.count == 8 && died.failures.allSatisfy { $0.code == .engineDead && $0.retryable })
        #expect(died.credits.isEmpty, "nothing is asked for while the engine is down")
        #expect(h.machine.held.count == 3)
        let restart = h.advance(250)
        #expect(restart.engineStarts == 1)
        let back = h.ready(EngineCapacity(sequences: 8))
        #expect(back.submitted == ["b8", "b9", "b10"])
        #expect(back.credits == [8], "12 wanted: 3 inside and 1 on its way before the engine died")
    }

    @Test func occupancyIsReportedFromTheEnginesOwnCounts() {
        var h = Harness { $0.statsIntervalMilliseconds = 1_000 }
        h.startReady(EngineCapacity(sequences: 8))
        h.welcome(.explicit)
        h.batch("a")
        h.finish("a", engine: EngineStepStats(capacity: 8, steps: 10, sequenceSteps: 40))
        let first = h.advance(1_000).events
        #expect(first.contains { if case .engineStatistics(_, let o, _, _, 1) = $0 { return o == 0.5 }; return false }, "\(first)")
        h.batch("b")
        h.finish("b", engine: EngineStepStats(capacity: 8, steps: 20, sequenceSteps: 120))
        #expect(h.advance(500).events.isEmpty, "once per interval")
        let second = h.advance(500).events
        #expect(second.contains { if case .engineStatistics(_, let o, _, _, 2) = $0 { return o == 1.0 }; return false },
                "occupancy since the last report: 80 sequence-steps in 10 steps of 8: \(second)")
    }
}
