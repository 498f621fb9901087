import CompassProtocol
import Testing
@testable import CompassScheduler

/// A payload format for tests: each byte is one request, and its result is the same byte (0 for a
/// request that failed); stats are one byte, the requests answered. The scheduler knows payloads
/// only through its `PayloadFormat`, so poison isolation must work the same with this one.
struct ByteFormat: PayloadFormat {
    func halves(_ requests: [UInt8]) -> (first: [UInt8], second: [UInt8])? {
        requests.count < 2 ? nil : (Array(requests[..<(requests.count / 2)]), Array(requests[(requests.count / 2)...]))
    }

    func concatenate(_ results: [[UInt8]]) -> [UInt8] { results.flatMap { $0 } }

    func failedResults(_ requests: [UInt8], code: AnyFailureCode, message: String) -> [UInt8] {
        [UInt8](repeating: 0, count: requests.count)
    }

    func mergeStats(_ stats: [[UInt8]], parts: Int) -> [UInt8] { [stats.reduce(0) { $0 + ($1.first ?? 0) }] }
}

@Suite("Poison isolation through the payload format")
struct ByteFormatTests {
    @Test("The scheduler cuts and joins payloads only through its format: one poison request of 8 fails alone")
    func isolationWithAnotherFormat() throws {
        var h = Harness()
        h.record(h.scheduler.submit(from: PeerID("prod"), batchID: "b", pool: "p", meta: BatchMeta(requestCount: 8),
                                    payload: [1, 2, 3, 4, 5, 6, 7, 8], now: h.now))
        // A worker whose engine dies on request 5 and answers every other request with itself.
        var pending = h.ready("w", credit: 1)
        var rounds = 0
        while !pending.isEmpty && rounds < 100 {
            rounds += 1
            var next: [SchedulerAction<[UInt8]>] = []
            for case .toWorker(_, .batch(let id, let attempt, let meta, let payload)) in pending {
                #expect(Int(meta.requestCount) == payload.count, "\(id): the meta counts the half's requests")
                if payload.contains(5) {
                    next += h.failed("w", id, attempt: attempt, code: .engineDead, retryable: true)
                } else {
                    next += h.record(h.scheduler.workerResult(PeerID("w"), batchID: id, attempt: attempt, stats: [UInt8(payload.count)],
                                                              payload: payload, now: h.now))
                }
            }
            pending = next
        }
        #expect(h.log.failures.isEmpty)
        let answers = h.log.compactMap { action -> (stats: [UInt8], payload: [UInt8])? in
            if case .toProducer(_, .result("b", _, let stats, let payload)) = action { return (stats, payload) }
            return nil
        }
        let answer = try #require(answers.first)
        #expect(answers.count == 1)
        #expect(answer.payload == [1, 2, 3, 4, 0, 6, 7, 8])
        #expect(answer.stats == [7])
        #expect(h.log.events.filter { if case .split = $0 { return true }; return false }.count == 3)
        #expect(h.log.events.contains {
            if case .isolated("b", 1, let code, let message) = $0 { code.known == .engineDead && message.contains("killed the engine 2 times") } else { false }
        })
        h.ack("b")
        #expect(h.scheduler.batchCount == 0)
    }
}
