import CompassProtocol
import Foundation
import Testing
@testable import CompassScheduler

/// A worker simulated in the test: it runs a payload's requests, and "dies" (engine_dead) when one
/// of them is marked as poison, as a real engine would crash on it.
struct SimulatedWorker {
    let name: String
    var poison: Set<String>

    func requests(_ payload: [UInt8]) -> [String] {
        let array = (try? JSONSerialization.jsonObject(with: Data(payload))) as? [[String: Any]] ?? []
        return array.map { $0["custom_id"] as? String ?? "?" }
    }

    /// Answers every dispatch in `actions` sent to this worker; returns the scheduler's reactions.
    func serve(_ h: inout Harness, _ actions: [SchedulerAction<[UInt8]>]) -> [SchedulerAction<[UInt8]>] {
        var reactions: [SchedulerAction<[UInt8]>] = []
        for case .toWorker(let w, .batch(let id, let attempt, _, let payload)) in actions where w.description == name {
            let ids = requests(payload)
            if ids.contains(where: poison.contains) {
                reactions += h.failed(name, id, attempt: attempt, code: .engineDead, retryable: true)
            } else {
                let results = ids.map { InferenceResult(customID: $0, text: "ok \($0)", promptTokens: 1, completionTokens: 1, finishReason: "stop") }
                let bytes = [UInt8](try! JSONEncoder().encode(results))
                reactions += h.record(h.scheduler.workerResult(PeerID(name), batchID: id, attempt: attempt, stats: Array(#"{"requests":\#(ids.count)}"#.utf8),
                                                               payload: bytes, now: h.now))
            }
        }
        return reactions
    }

    /// Serves until the scheduler stops sending this worker batches.
    func run(_ h: inout Harness, from actions: [SchedulerAction<[UInt8]>]) {
        var pending = actions
        var rounds = 0
        while !pending.isEmpty && rounds < 1000 {
            pending = serve(&h, pending)
            rounds += 1
        }
    }
}

func payload(_ ids: [String]) -> [UInt8] {
    [UInt8](try! JSONEncoder().encode(ids.map { InferenceRequest(customID: $0, prompt: "p \($0)") }))
}

@Suite("Poison isolation")
struct PoisonTests {
    func submitBatch(_ h: inout Harness, _ id: String, _ ids: [String], maxAttempts: UInt16 = 0) -> [SchedulerAction<[UInt8]>] {
        h.record(h.scheduler.submit(from: PeerID("prod"), batchID: id, pool: "p",
                                    meta: BatchMeta(requestCount: UInt32(ids.count), maxAttempts: maxAttempts),
                                    payload: payload(ids), now: h.now))
    }

    @Test("64 requests, one kills the engine: 63 succeed, 1 fails with engine_dead, one RESULT, bounded dispatches")
    func oneBadRequestOfSixtyFour() throws {
        var h = Harness(format: JSONPayloadFormat())
        let ids = (0..<64).map { "r\($0)" }
        let worker = SimulatedWorker(name: "w", poison: ["r37"])
        _ = submitBatch(&h, "big", ids)
        worker.run(&h, from: h.ready("w", credit: 1))
        #expect(h.log.failures.isEmpty)
        let results = h.log.compactMap { action -> [UInt8]? in
            if case .toProducer(_, .result("big", _, _, let payload)) = action { return payload }
            return nil
        }
        #expect(results.count == 1)
        let decoded = try JSONDecoder().decode([InferenceResult].self, from: Data(try #require(results.first)))
        #expect(decoded.map(\.customID) == ids) // every request, in the original order
        #expect(decoded.filter { $0.error == nil }.count == 63)
        #expect(decoded.first { $0.customID == "r37" }?.error?.code == "engine_dead")
        // 2 kills of the whole batch, then one kill per level of halving (6 levels), one more for
        // the single request, plus each level's healthy half: a small bounded number.
        let dispatches = h.log.dispatches.count
        #expect(dispatches <= 2 + 6 * 2 + 2, "took \(dispatches) dispatches")
        #expect(h.log.events.filter { if case .split = $0 { return true }; return false }.count == 6)
        var attempts: UInt32 = 0
        for case .toProducer(_, .result("big", let a, _, _)) in h.log { attempts = a }
        #expect(Int(attempts) == dispatches)
        // Nothing is left behind once the producer acknowledges.
        h.record(h.scheduler.ack(from: PeerID("prod"), batchID: "big", now: h.now))
        #expect(h.scheduler.batchCount == 0)
        #expect(h.scheduler.snapshot(now: h.now).pools[0].heldBytes == 0)
    }

    @Test("Two poison requests in one batch are both isolated")
    func twoBadRequests() throws {
        var h = Harness(format: JSONPayloadFormat())
        let ids = (0..<16).map { "r\($0)" }
        let worker = SimulatedWorker(name: "w", poison: ["r2", "r11"])
        _ = submitBatch(&h, "b", ids)
        worker.run(&h, from: h.ready("w"))
        let payload = try #require(h.log.compactMap { a -> [UInt8]? in
            if case .toProducer(_, .result("b", _, _, let p)) = a { return p }; return nil }.first)
        let decoded = try JSONDecoder().decode([InferenceResult].self, from: Data(payload))
        #expect(decoded.map(\.customID) == ids)
        #expect(Set(decoded.filter { $0.error != nil }.map(\.customID)) == ["r2", "r11"])
    }

    @Test("A single-request batch that kills engines fails after its attempts, as FAILED")
    func singlePoisonRequest() {
        var h = Harness(format: JSONPayloadFormat())
        let worker = SimulatedWorker(name: "w", poison: ["x"])
        _ = submitBatch(&h, "one", ["x"])
        worker.run(&h, from: h.ready("w"))
        #expect(h.log.failures.map(\.code) == ["engine_dead"])
        #expect(h.log.dispatches.count == 3)
    }

    @Test("Cancel while split drops every half and answers once")
    func cancelWhileSplit() {
        var h = Harness(format: JSONPayloadFormat())
        let ids = (0..<8).map { "r\($0)" }
        _ = submitBatch(&h, "b", ids)
        h.ready("w", credit: 4)
        h.failed("w", "b", attempt: 1, code: .engineDead, retryable: true)
        h.failed("w", "b", attempt: 2, code: .engineDead, retryable: true)
        #expect(h.log.dispatches.map(\.id).suffix(2) == ["b~0", "b~1"])
        let out = h.record(h.scheduler.cancel(from: PeerID("prod"), batchID: "b", now: h.now))
        #expect(out.failures.map(\.code) == ["cancelled"])
        #expect(out.sent(to: "w").filter { if case .cancel = $0 { return true }; return false }.count == 2)
        // Late results of the halves change nothing.
        h.result("w", "b~0", attempt: 1)
        #expect(h.log.results.isEmpty)
        h.record(h.scheduler.ack(from: PeerID("prod"), batchID: "b", now: h.now))
        #expect(h.scheduler.batchCount == 0)
    }

    @Test("Non-kill failures are retried whole, never split")
    func ordinaryFailuresDoNotSplit() {
        var h = Harness(format: JSONPayloadFormat())
        _ = submitBatch(&h, "b", ["a", "b", "c", "d"])
        h.ready("w")
        h.failed("w", "b", attempt: 1, code: .engineError, retryable: true)
        h.failed("w", "b", attempt: 2, code: .engineError, retryable: true)
        #expect(h.log.dispatches.map(\.id) == ["b", "b", "b"])
    }

    @Test("A producer's batch id may not contain '~' (the halves of a split batch are named with it): refused bad_frame")
    func batchIDWithTheSplitSeparatorIsRefused() {
        var h = Harness(format: JSONPayloadFormat())
        _ = submitBatch(&h, "b", (0..<8).map { "r\($0)" })
        h.ready("w", credit: 4)
        h.failed("w", "b", attempt: 1, code: .engineDead, retryable: true)
        h.failed("w", "b", attempt: 2, code: .engineDead, retryable: true)
        #expect(h.log.dispatches.map(\.id).suffix(2) == ["b~0", "b~1"])
        for id in ["b~0", "b~1", "~", "x~y"] {
            let out = submitBatch(&h, id, ["q"])
            #expect(out.rejections.map(\.code) == [.badFrame], "\(id)")
            #expect(out.accepted.isEmpty, "\(id)")
            guard case .toProducer(_, .rejected(_, _, let message, _)) = out.first(where: { if case .toProducer = $0 { true } else { false } }) else { continue }
            #expect(message.contains("batch id") && message.contains("~"), "\(message)")
        }
        // The halves are untouched: they finish, and the batch answers once with every request.
        let results = ["b~0", "b~1"].flatMap { id in
            h.record(h.scheduler.workerResult(PeerID("w"), batchID: id, attempt: 1, stats: Array(#"{"requests":4}"#.utf8),
                                              payload: [UInt8](try! JSONEncoder().encode((id == "b~0" ? 0..<4 : 4..<8).map {
                                                  InferenceResult(customID: "r\($0)", text: "ok", promptTokens: 1, completionTokens: 1, finishReason: "stop") })),
                                              now: h.now))
        }
        #expect(results.results.map(\.id) == ["b"])
    }

    @Test("A batch whose halves' ids are taken (a batch restored from an older journal) is retried whole, not split")
    func takenHalfIDsPreventTheSplit() {
        var h = Harness(format: JSONPayloadFormat()) { $0.journaling = true }
        h.scheduler.restore([BatchSnapshot(id: "b~0", session: SessionKey("prod-session"), pool: "p", meta: BatchMeta(requestCount: 1),
                                           maxAttempts: 3, payload: payload(["q"]), outcome: .result(stats: [0], payload: [7]))], now: h.now)
        _ = submitBatch(&h, "b", (0..<8).map { "r\($0)" })
        h.ready("w")
        h.failed("w", "b", attempt: 1, code: .engineDead, retryable: true)
        h.failed("w", "b", attempt: 2, code: .engineDead, retryable: true)
        #expect(h.log.dispatches.map(\.id) == ["b", "b", "b"])
        #expect(h.log.events.allSatisfy { if case .split = $0 { false } else { true } })
    }
}
