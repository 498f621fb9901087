import CompassEngines
import CompassProtocol
import Testing

@Suite("Continuous batching (the synthetic engine's step loop, as a value)")
struct ContinuousBatcherTests {
    func results(_ n: Int, prompt: Int = 3) -> [InferenceResult] {
        (0..<n).map { InferenceResult(customID: "r\($0)", text: "", promptTokens: prompt, completionTokens: 1, finishReason: "stop") }
    }

    /// Runs steps until nothing is left; returns the events in order.
    func drain(_ b: inout ContinuousBatcher, limit: Int = 10_000) -> [ContinuousBatcher.Event] {
        var events: [ContinuousBatcher.Event] = []
        var n = 0
        while b.hasWork && n < limit {
            _ = b.beginStep()
            events += b.endStep()
            n += 1
        }
        return events
    }

    func finished(_ events: [ContinuousBatcher.Event]) -> [String] {
        events.compactMap { if case .finished(let key, _, _, _) = $0 { return key.batchID }; return nil }
    }

    @Test func sequencesOfManyBatchesShareTheSlotsAndEachBatchEndsWithItsLastSequence() {
        var b = ContinuousBatcher(capacity: 4)
        // Six one-request batches of 2, 3, 4, 2, 2, 1 tokens.
        for (i, tokens) in [2, 3, 4, 2, 2, 1].enumerated() {
            #expect(b.add(.init("b\(i)", 1), results: results(1), tokens: [tokens], startedAt: 0) == nil)
        }
        let first = b.beginStep()
        #expect(first.running == 4 && first.joinedPromptTokens == 12, "four slots, four prompts of 3 tokens join")
        #expect(b.waitingCount == 2)
        #expect(b.endStep().isEmpty)
        _ = b.beginStep()
        #expect(finished(b.endStep()) == ["b0", "b3"], "two tokens each")
        #expect(b.beginStep().running == 4, "b4 and b5 took their slots at the next step")
        #expect(finished(b.endStep()) == ["b1", "b5"])
        _ = b.beginStep()
        #expect(finished(b.endStep()) == ["b2", "b4"])
        #expect(finished(drain(&b)).isEmpty && !b.hasWork)
        // Four steps: full three times, then b2 and b4.
        #expect(b.steps == 4 && b.sequenceSteps == 4 + 4 + 4 + 2)
        #expect(b.batchCount == 0)
    }

    @Test func aBatchReportsProgressAsItsRequestsFinishAndItsOwnOccupancy() throws {
        var b = ContinuousBatcher(capacity: 4)
        _ = b.add(.init("big", 1), results: results(3), tokens: [1, 2, 3], startedAt: 0)
        _ = b.beginStep()
        let one = b.endStep()
        guard case .progress(let key, 1, 3)? = one.first else { Issue.record("\(one)"); return }
        #expect(key.batchID == "big")
        _ = b.beginStep()
        _ = b.endStep()
        _ = b.beginStep()
        let last = b.endStep()
        guard case .finished(_, let all, let stats, _)? = last.first else { Issue.record("\(last)"); return }
        #expect(all.count == 3)
        #expect(stats.steps == 3 && stats.sequenceSteps == 3 + 2 + 1 && stats.capacity == 4)
        #expect(stats.occupancy == 6.0 / 12.0, "three steps of 4 slots, 6 sequence-steps used")
    }

    @Test func aBatchWithNothingToRunFinishesAtOnce() {
        var b = ContinuousBatcher(capacity: 2)
        let event = b.add(.init("failed", 1), results: results(2), tokens: [nil, nil], startedAt: 7)
        guard case .finished(_, let all, _, 7)? = event else { Issue.record("\(String(describing: event))"); return }
        #expect(all.count == 2 && !b.hasWork)
    }

    @Test func cancelTakesABatchsSequencesOutOfSlotsAndQueue() {
        var b = ContinuousBatcher(capacity: 2)
        _ = b.add(.init("a", 1), results: results(3), tokens: [5, 5, 5], startedAt: 0)
        _ = b.add(.init("b", 1), results: results(1), tokens: [1], startedAt: 0)
        _ = b.beginStep()
        let cancelled = b.cancel(.init("a", 1))
        let again = b.cancel(.init("a", 1))
        #expect(cancelled)
        #expect(!again, "gone already")
        #expect(b.runningCount == 0 && b.waitingCount == 1)
        #expect(finished(b.endStep()).isEmpty, "the step that was under way counts only what is left")
        #expect(finished(drain(&b)) == ["b"])
    }

    @Test func afullQueueKeepsEverySlotBusy() {
        var b = ContinuousBatcher(capacity: 8)
        for i in 0..<200 { _ = b.add(.init("b\(i)", 1), results: results(1), tokens: [1 + i % 7], startedAt: 0) }
        var steps = 0
        while b.waitingCount > 0 {
            let running = b.beginStep().running
            #expect(running == 8 || b.waitingCount == 0, "a step ran with \(running) of 8 while \(b.waitingCount) waited")
            _ = b.endStep()
            steps += 1
        }
        #expect(b.sequenceSteps >= (steps - 1) * 8)
    }
}
