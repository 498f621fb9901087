import CompassBroker
import CompassClient
import CompassProtocol
import CompassWire
import Foundation
import Testing
import ZMQ

/// Issue 20, items 5 and 9: a producer that never ACKs fills only its own share of a pool, and a
/// batch id re-used for other work is refused instead of answered with the old batch's result.
@Suite("Hostile peers against the real broker: session shares and batch id re-use", .serialized, .timeLimit(.minutes(3)))
struct HostilePeerShareTests {
    /// A one-request batch of about 50 KB (one 50 KB word: its result is as big).
    static func big(_ id: String) -> String {
        "[{\"custom_id\":\"\(id)\",\"prompt\":\"\(String(repeating: "y", count: 50_000))\",\"max_tokens\":1}]"
    }

    @Test("A session that never ACKs fills its share and gets busy; another session's SUBMITs are all accepted meanwhile")
    func neverAckingSessionCannotLockOthersOut() async throws {
        let dir = TempDir()
        // A 2 MB pool: a session's share is a quarter, 500 KB.
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-pool-bytes", "2000000"])
        let worker = try startWorker(broker.backend, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        let context = try ZMQContext()
        let greedy = try RawProducer(context, broker.frontend)
        try greedy.send(.hello(session: "s-greedy"))
        _ = try greedy.receive(until: \.isWelcome)
        // 3 MB offered, never ACKed: before the fix it filled the whole pool with its results.
        for i in 0..<60 { try greedy.submit("greedy-\(i)", Self.big("g\(i)")) }
        var replies = try greedy.sync()
        let accepted = replies.filter(\.isAccepted).count
        let busy = replies.filter { $0.rejectionCode == "busy" }
        #expect(accepted >= 1 && accepted < 60, "accepted \(accepted)")
        #expect(!busy.isEmpty, "\(replies.compactMap(\.rejectionCode))")
        if case .rejected(_, _, let message, let retry)? = busy.first {
            #expect(message.contains("session"), "\(message)")
            #expect(retry > 0)
        }
        // Wait until every accepted batch has finished: the results now sit unacknowledged.
        while replies.filter(\.isOutcome).count < accepted {
            replies += try greedy.receive(until: \.isOutcome)
        }
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let pool = try #require(try await status(client).scheduler.pools.first)
        #expect(pool.heldBytes <= 2 * 500_000 + 100_000, "held \(pool.heldBytes)")
        let greedyHeld = try await status(client).scheduler.sessions.first { $0.session == "s-greedy" }?.heldBytes ?? 0
        #expect(greedyHeld > 0 && greedyHeld <= pool.heldBytes, "the greedy session holds \(greedyHeld)")
        // The greedy session stays refused while its results wait.
        try greedy.submit("greedy-more", Self.big("gm"))
        #expect(try greedy.sync().compactMap(\.rejectionCode) == ["busy"])

        // Another session: every SUBMIT accepted at once (no busy), and every result delivered.
        let other = try RawProducer(context, broker.frontend)
        try other.send(.hello(session: "s-other"))
        _ = try other.receive(until: \.isWelcome)
        for i in 0..<6 { try other.submit("other-\(i)", Self.big("o\(i)")) }
        var answers = try other.sync()
        #expect(answers.filter(\.isAccepted).count == 6, "\(answers.compactMap(\.rejectionCode))")
        #expect(answers.compactMap(\.rejectionCode).isEmpty)
        while answers.filter(\.isOutcome).count < 6 { answers += try other.receive(until: \.isOutcome) }
        #expect(Set(answers.compactMap(\.outcomeID)) == Set((0..<6).map { "other-\($0)" }))
        for i in 0..<6 { try other.send(.ack(batchID: "other-\(i)")) }
        #expect(try other.sync().compactMap(\.rejectionCode).isEmpty)

        // Once the greedy session ACKs what it holds, it has room again.
        for id in Set(replies.compactMap(\.outcomeID)) { try greedy.send(.ack(batchID: id)) }
        try greedy.submit("greedy-after", Self.big("ga"))
        #expect(try greedy.sync().contains { $0.isAccepted })
    }

    @Test("A batch id re-used with another payload or pool is refused payload_mismatch (never the old result); the same SUBMIT stays idempotent; ACKed ids are remembered for --remembered-acks ACKs")
    func batchIDReuseIsRefused() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--remembered-acks", "2", "--pool", "other"])
        let worker = try startWorker(broker.backend, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        let context = try ZMQContext()
        let producer = try RawProducer(context, broker.frontend)
        try producer.send(.hello(session: "s-reuse"))
        _ = try producer.receive(until: \.isWelcome)
        let first = #"[{"custom_id":"a","prompt":"first work"}]"#, second = #"[{"custom_id":"a","prompt":"other work"}]"#
        try producer.submit("r-1", first)
        let done = try producer.receive(until: \.isOutcome)
        guard case .result(_, _, _, let original)? = done.last else { Issue.record("\(done)"); return }
        #expect(String(decoding: original.bytes, as: UTF8.self).contains("work first"))

        // Other work under the same id: refused with the code, and no RESULT comes with it.
        try producer.submit("r-1", second)
        try producer.submit("r-1", first, pool: "other")
        let refused = try producer.sync()
        #expect(refused.compactMap(\.rejectionCode) == ["payload_mismatch", "payload_mismatch"], "\(refused)")
        #expect(!refused.contains { $0.isOutcome }, "\(refused)")
        // The identical re-SUBMIT: ACCEPTED and the same result again.
        try producer.submit("r-1", first)
        let again = try producer.receive(until: \.isOutcome)
        #expect(again.contains { $0.isAccepted })
        if case .result(_, _, _, let payload)? = again.last { #expect(payload.bytes == original.bytes) }

        // ACKed: the id is remembered with a hash of its payload.
        try producer.send(.ack(batchID: "r-1"))
        try producer.submit("r-1", first)
        try producer.submit("r-1", second)
        #expect(try producer.sync().compactMap(\.rejectionCode) == ["duplicate", "payload_mismatch"])
        // Two more ACKs push it out of the window of 2: the id is new again and runs afresh.
        for id in ["r-2", "r-3"] {
            try producer.submit(id, first)
            _ = try producer.receive(until: \.isOutcome)
            try producer.send(.ack(batchID: id))
        }
        try producer.submit("r-1", second)
        let fresh = try producer.receive(until: \.isOutcome)
        #expect(fresh.contains { $0.isAccepted }, "\(fresh)")
        if case .result(_, let attempts, _, let payload)? = fresh.last {
            #expect(attempts == 1)
            #expect(String(decoding: payload.bytes, as: UTF8.self).contains("work other"))
        } else {
            Issue.record("\(fresh)")
        }
    }
}
