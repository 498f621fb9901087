import CompassEngines
import CompassProtocol
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Synthetic engine", .timeLimit(.minutes(1)))
struct SyntheticEngineTests {
    @Test func completionIsThePromptReversedAndCut() {
        let r = SyntheticModel.complete(InferenceRequest(customID: "a", prompt: "one two three four", maxTokens: 3))
        #expect(r.text == "four three two")
        #expect(r.promptTokens == 4)
        #expect(r.completionTokens == 3)
        #expect(r.finishReason == "length")
        let full = SyntheticModel.complete(InferenceRequest(customID: "b", prompt: "x y"))
        #expect(full.text == "y x")
        #expect(full.finishReason == "stop")
    }

    @Test func stopStringsCutTheText() {
        let r = SyntheticModel.complete(InferenceRequest(customID: "a", prompt: "a b STOP c d", stop: ["STOP"]))
        #expect(r.text == "d c ")
        #expect(r.finishReason == "stop")
    }

    @Test func scoringFollowsTheModelsCompletion() {
        // The completion of "a bb ccc" is "ccc bb a": " ccc bb" is greedy, "bb" is not.
        let r = SyntheticModel.complete(InferenceRequest(customID: "s", prompt: "a bb ccc ",
                                                         continuations: [.text(" ccc bb"), .text("bb"), .tokens([7, 8])]))
        #expect(r.finishReason == "score" && r.text == "" && r.completionTokens == 0 && r.promptTokens == 3)
        #expect(r.scores == [ContinuationScore(logprob: -0.25, tokens: 2, greedy: true),
                             ContinuationScore(logprob: -2, tokens: 1, greedy: false),
                             ContinuationScore(logprob: -4, tokens: 2, greedy: false)])
    }

    @Test func promptAndCompletionLogprobs() throws {
        let r = SyntheticModel.complete(InferenceRequest(customID: "l", maxTokens: 1, promptTokenIDs: [5, 60], logprobs: 2, promptLogprobs: 0))
        #expect(r.text == "t60")
        let prompt = try #require(r.promptLogprobs)
        #expect(prompt.tokenIDs == [5, 60] && prompt.tokens == ["t5", "t60"])
        #expect(prompt.tokenLogprobs == [nil, -3])
        #expect(prompt.topLogprobs == [nil, []])
        let generated = try #require(r.logprobs)
        #expect(generated.tokenIDs == [60] && generated.tokenLogprobs == [-0.125])
        #expect(generated.topLogprobs.first??.map(\.token) == ["t60", "<alt1>"])
        #expect(generated.topLogprobs.first??.map(\.logprob) == [-0.125, -1.125])
    }

    @Test func latencyModelAddsItsParts() {
        let results = [InferenceResult(customID: "a", text: "", promptTokens: 10, completionTokens: 4, finishReason: nil),
                       InferenceResult(customID: "b", text: "", promptTokens: 6, completionTokens: 9, finishReason: nil)]
        let profile = LatencyProfile(batchMicroseconds: 100, prefillMicrosecondsPerToken: 2, decodeMicrosecondsPerStep: 10)
        #expect(SyntheticModel.latencyMicroseconds([], results: results, profile: profile) == 100 + 16 * 2 + 9 * 10)
    }

    /// Waits for the engine's next events, up to a deadline.
    func events(_ engine: SyntheticEngine, until done: ([EngineEvent]) -> Bool) -> [EngineEvent] {
        var all: [EngineEvent] = []
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline && !done(all) {
            var p = pollfd(fd: engine.eventFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 100)
            all += engine.takeEvents()
        }
        return all
    }

    func payload(_ requests: [InferenceRequest]) -> [UInt8] { [UInt8](try! JSONEncoder().encode(requests)) }

    func finished(_ events: [EngineEvent]) -> [InferenceResult]? {
        for case .finished(_, _, let payload, _) in events {
            return try? JSONDecoder().decode([InferenceResult].self, from: Data(payload))
        }
        return nil
    }

    @Test func runsAJobAndReportsReadyFirst() throws {
        let engine = try SyntheticEngine(profile: LatencyProfile(batchMicroseconds: 2000))
        try engine.start()
        defer { engine.stop() }
        engine.submit(EngineJob(batchID: "b", attempt: 1, meta: BatchMeta(), payload: payload([
            InferenceRequest(customID: "1", prompt: "a b"), InferenceRequest(customID: "2", prompt: "c d @@fail")])))
        let seen = events(engine) { finished($0) != nil }
        guard case .ready = seen.first else { Issue.record("ready was not first: \(seen)"); return }
        #expect(seen.contains { if case .progress(_, _, _, 2) = $0 { return true }; return false })
        let results = try #require(finished(seen))
        #expect(results.map(\.customID) == ["1", "2"])
        #expect(results[0].text == "b a")
        #expect(results[1].error?.code == "bad_request")
    }

    @Test func badRequestFailsAloneAndGarbageFailsTheBatch() throws {
        let engine = try SyntheticEngine()
        try engine.start()
        defer { engine.stop() }
        engine.submit(EngineJob(batchID: "mixed", attempt: 1, meta: BatchMeta(), payload: Array(#"[{"custom_id":"ok","prompt":"x y"},{"custom_id":"bad"}]"#.utf8)))
        let results = try #require(finished(events(engine) { finished($0) != nil }))
        #expect(results.map(\.customID) == ["ok", "bad"])
        #expect(results[0].error == nil)
        #expect(results[1].error?.code == "bad_request")
        engine.submit(EngineJob(batchID: "junk", attempt: 1, meta: BatchMeta(), payload: Array("{}".utf8)))
        let failed = events(engine) { $0.contains { if case .failed = $0 { return true }; return false } }
        #expect(failed.contains { if case .failed("junk", 1, .badRequest, false, _) = $0 { return true }; return false })
    }

    @Test func crashMarkerKillsTheEngineUntilRestarted() throws {
        let engine = try SyntheticEngine()
        try engine.start()
        defer { engine.stop() }
        engine.submit(EngineJob(batchID: "b", attempt: 1, meta: BatchMeta(), payload: payload([InferenceRequest(customID: "x", prompt: "@@crash")])))
        let seen = events(engine) { $0.contains { if case .died = $0 { return true }; return false } }
        #expect(seen.contains { if case .died(.engineDead, _) = $0 { return true }; return false })
        try engine.start()
        engine.submit(EngineJob(batchID: "c", attempt: 1, meta: BatchMeta(), payload: payload([InferenceRequest(customID: "y", prompt: "fine")])))
        #expect(finished(events(engine) { finished($0) != nil })?.first?.text == "fine")
    }

    @Test func hangEndsWhenCancelled() throws {
        let engine = try SyntheticEngine()
        try engine.start()
        defer { engine.stop() }
        engine.submit(EngineJob(batchID: "h", attempt: 1, meta: BatchMeta(), payload: payload([InferenceRequest(customID: "x", prompt: "@@hang")])))
        _ = events(engine) { $0.contains { if case .ready = $0 { return true }; return false } }
        engine.cancel(batchID: "h", attempt: 1)
        let seen = events(engine) { $0.contains { if case .failed = $0 { return true }; return false } }
        #expect(seen.contains { if case .failed("h", 1, .cancelled, false, _) = $0 { return true }; return false })
    }

    @Test func unknownEngineArgumentIsRefused() {
        #expect(throws: EngineConfigurationError.self) { try SyntheticEngine(arguments: ["batch_sec": "1"], workerLabel: "") }
        #expect(throws: EngineConfigurationError.self) { try SyntheticEngine(arguments: ["batch_ms": "-1"], workerLabel: "") }
    }
}

@Suite("Synthetic engine, continuous batching", .timeLimit(.minutes(1)))
struct SyntheticContinuousTests {
    func payload(_ requests: [InferenceRequest]) -> [UInt8] { [UInt8](try! JSONEncoder().encode(requests)) }

    /// Events until `done` holds, waiting on the engine's fd (deadline 10 s).
    func events(_ engine: SyntheticEngine, until done: ([EngineEvent]) -> Bool) -> [EngineEvent] {
        var all: [EngineEvent] = []
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline && !done(all) {
            var p = pollfd(fd: engine.eventFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 100)
            all += engine.takeEvents()
        }
        return all
    }

    func finishedIDs(_ events: [EngineEvent]) -> [String] {
        events.compactMap { if case .finished(let id, _, _, _) = $0 { return id }; return nil }
    }

    @Test func capacityArgumentsMakeASteppingEngineAndBadOnesAreRefused() throws {
        let engine = try SyntheticEngine(arguments: ["capacity": "16", "step_us": "100", "seq_us": "2"], workerLabel: "")
        #expect(engine.stepping == StepProfile(capacity: 16, stepMicroseconds: 100, sequenceMicroseconds: 2))
        #expect(throws: EngineConfigurationError.self) { try SyntheticEngine(arguments: ["step_us": "100"], workerLabel: "") }
        #expect(throws: EngineConfigurationError.self) { try SyntheticEngine(arguments: ["capacity": "8", "batch_ms": "5"], workerLabel: "") }
        #expect(throws: EngineConfigurationError.self) { try SyntheticEngine(arguments: ["capacity": "0"], workerLabel: "") }
    }

    @Test func readySaysTheCapacityAndBatchesRunSideBySide() throws {
        let engine = try SyntheticEngine(stepping: StepProfile(capacity: 4, stepMicroseconds: 1_000))
        try engine.start()
        defer { engine.stop() }
        let ready = events(engine) { !$0.isEmpty }
        guard case .ready(_, let capacity)? = ready.first else { Issue.record("\(ready)"); return }
        #expect(capacity.sequences == 4)
        // A long batch first, then a short one: the short one joins and finishes first.
        engine.submit(EngineJob(batchID: "long", attempt: 1, meta: BatchMeta(), payload: payload([
            InferenceRequest(customID: "l", prompt: (0..<40).map { "w\($0)" }.joined(separator: " "), maxTokens: 30)])))
        engine.submit(EngineJob(batchID: "short", attempt: 1, meta: BatchMeta(), payload: payload([
            InferenceRequest(customID: "s1", prompt: "a b c", maxTokens: 2), InferenceRequest(customID: "s2", prompt: "d e @@fail")])))
        let seen = events(engine) { finishedIDs($0).count == 2 }
        #expect(finishedIDs(seen) == ["short", "long"])
        for case .finished(let id, _, let data, let stats) in seen {
            let results = try JSONDecoder().decode([InferenceResult].self, from: Data(data))
            let engineStats = try #require(stats.engine)
            #expect(engineStats.capacity == 4)
            if id == "short" {
                #expect(results.map(\.text) == ["c b", nil] && results[1].error?.code == "bad_request")
                #expect(engineStats.occupancy == 0.5, "two steps with the long and the short request: 2 of 4 slots")
            } else {
                #expect(results.first?.completionTokens == 30)
                #expect(engineStats.steps == 30 && engineStats.sequenceSteps == 32)
            }
        }
    }

    @Test func cancelEndsOneBatchAndOthersRunOn() throws {
        let engine = try SyntheticEngine(stepping: StepProfile(capacity: 8, stepMicroseconds: 2_000))
        try engine.start()
        defer { engine.stop() }
        engine.submit(EngineJob(batchID: "c", attempt: 1, meta: BatchMeta(), payload: payload([InferenceRequest(customID: "x", prompt: (0..<500).map { "w\($0)" }.joined(separator: " "), maxTokens: 500)])))
        engine.submit(EngineJob(batchID: "k", attempt: 1, meta: BatchMeta(), payload: payload([InferenceRequest(customID: "y", prompt: "q r", maxTokens: 5)])))
        _ = events(engine) { $0.contains { if case .ready = $0 { return true }; return false } }
        engine.cancel(batchID: "c", attempt: 1)
        let seen = events(engine) { finishedIDs($0) == ["k"] && $0.contains { if case .failed = $0 { return true }; return false } }
        #expect(seen.contains { if case .failed("c", 1, .cancelled, false, _) = $0 { return true }; return false })
        #expect(finishedIDs(seen) == ["k"])
    }

    @Test func aCrashMarkerKillsTheSteppingEngine() throws {
        let engine = try SyntheticEngine(stepping: StepProfile(capacity: 8, stepMicroseconds: 500))
        try engine.start()
        defer { engine.stop() }
        engine.submit(EngineJob(batchID: "b", attempt: 1, meta: BatchMeta(), payload: payload([InferenceRequest(customID: "x", prompt: "@@crash")])))
        let seen = events(engine) { $0.contains { if case .died = $0 { return true }; return false } }
        #expect(seen.contains { if case .died(.engineDead, _) = $0 { return true }; return false })
    }
}
