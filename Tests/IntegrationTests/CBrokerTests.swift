import CompassClient
import CompassProtocol
import Foundation
import Testing
import ZMQ

/// bench/cbroker/cbroker.c is the minimal C broker that `bench/run --only broker-ceiling` measures
/// compass-broker against (bench/README.md, "A ceiling for the broker"). Its figures mean something
/// only if it does the same job: here it is built with cc and driven, unchanged, by compass's own
/// worker, `compass submit` and a producer that counts every message on the wire, and must deliver
/// every batch exactly once. Nothing is timed.
@Suite("The bench's minimal C broker", .serialized, .timeLimit(.minutes(2)))
struct CBrokerTests {
    /// Builds the C broker with cc into `dir` and starts it; returns it with its frontend and backend.
    func startCBroker(in dir: TempDir) async throws -> (process: Spawned, frontend: String, backend: String) {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let binary = dir.file("compass-cbroker")
        let cc = try Spawned("/bin/sh", ["-c", #"cc -O2 -std=c11 -D_POSIX_C_SOURCE=200809L -o "$0" "$1" $(pkg-config --cflags --libs libzmq)"#,
                                         binary, root.appendingPathComponent("bench/cbroker/cbroker.c").path], in: dir, name: "cc")
        let built = try await cc.waitForExit()
        guard built.isSuccess else { throw HarnessError("cc failed: \(cc.log())") }
        let broker = try Spawned(binary, ["--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*", "--heartbeat-ms", "100",
                                          "--pool", "default"], in: dir, name: "cbroker")
        let line = try await broker.waitForLog("compass-cbroker listening")
        func field(_ key: String) throws -> String {
            guard let part = line.split(separator: " ").first(where: { $0.hasPrefix(key + "=") }) else { throw HarnessError("no \(key) in: \(line)") }
            return String(part.dropFirst(key.count + 1))
        }
        return (broker, try field("frontend"), try field("backend"))
    }

    /// The C broker's STATUS counters of its one pool, and its document.
    func counters(_ document: [String: Any]?) -> [String: Int] {
        let pools = (document?["scheduler"] as? [String: Any])?["pools"] as? [[String: Any]]
        return pools?.first?["counters"] as? [String: Int] ?? [:]
    }

    @Test("compass submit --batch-size 1 and 2 compass-workers through the C broker: each custom_id once, correct text")
    func compassSubmitThroughTheCBroker() async throws {
        let dir = TempDir()
        let broker = try await startCBroker(in: dir)
        // compass-worker asks for explicit credit; the C broker's WELCOME does not grant it, so the
        // worker falls back to implicit credit, as docs/protocol.md says it must.
        let workers = try await startWorkers(2, broker.backend, in: dir, prefix: "worker")
        let count = 600
        let expected = try writePrompts(dir.file("in.jsonl"), count: count)
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--pool", "default", "--broker", broker.frontend,
                                             "--batch-size", "1", "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        #expect(try await submit.waitForExit().isSuccess, "\(submit.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
        // The broker's own count: each batch submitted, dispatched and completed once, none dropped as stale.
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let document = try JSONSerialization.jsonObject(with: Data(try await client.status())) as? [String: Any]
        let c = counters(document)
        #expect(c["submitted"] == count && c["dispatched"] == count && c["completed"] == count, "\(String(describing: document))")
        #expect(c["failed"] == 0 && c["stale_dropped"] == 0 && c["rejected"] == 0, "\(String(describing: document))")
        #expect((document?["workers"] as? [Any])?.count == 2)
        _ = workers
    }

    @Test("500 one-request batches on the wire through the C broker and 2 compass-workers: one ACCEPTED and one RESULT each, correct text")
    func everyBatchOnceOnTheWire() async throws {
        let dir = TempDir()
        let broker = try await startCBroker(in: dir)
        let workers = try await startWorkers(2, broker.backend, in: dir, prefix: "worker")
        let context = try ZMQContext()
        let producer = try RawProducer(context, broker.frontend)
        try producer.send(.hello(session: "cbroker-\(UUID().uuidString)"))
        _ = try producer.receive(until: { $0.isWelcome })
        let count = 500
        let (list, expected) = requests(count, prefix: "raw")
        for (i, request) in list.enumerated() {
            try producer.submit("raw-batch-\(i)", String(decoding: try JSONEncoder().encode([request]), as: UTF8.self))
        }
        var outcomes: [String: Int] = [:]
        var replies = try producer.receive(until: { reply in
            if let id = reply.outcomeID { outcomes[id, default: 0] += 1 }
            return outcomes.count == count
        }, timeout: 60)
        var texts: [String: String] = [:]
        for case .result(let id, let attempts, _, let payload) in replies {
            #expect(attempts == 1)
            for result in try JSONDecoder().decode([InferenceResult].self, from: Data(payload.bytes)) { texts[result.customID] = result.text ?? "" }
            try producer.send(.ack(batchID: id))
        }
        // Everything the broker sent before it answers this HEARTBEAT (one connection is answered in
        // order): no second RESULT may be among it, and with every ACK read, it holds nothing.
        let later = try producer.sync()
        replies += later
        for id in later.compactMap(\.outcomeID) { outcomes[id, default: 0] += 1 }
        #expect(outcomes.count == count && outcomes.values.allSatisfy { $0 == 1 }, "\(outcomes.filter { $0.value != 1 })")
        #expect(replies.filter(\.isAccepted).count == count && replies.allSatisfy { $0.rejectionCode == nil })
        #expect(!replies.contains { if case .failed = $0 { true } else { false } })
        #expect(texts == expected)
        try producer.send(.status)
        let status = try producer.receive(until: { if case .status = $0 { true } else { false } })
        guard case .status(let json) = status.last else { throw HarnessError("no STATUS") }
        let document = try JSONSerialization.jsonObject(with: Data(json.bytes)) as? [String: Any]
        let c = counters(document)
        #expect(c["dispatched"] == count && c["completed"] == count && c["stale_dropped"] == 0, "\(String(describing: document))")
        let pool = ((document?["scheduler"] as? [String: Any])?["pools"] as? [[String: Any]])?.first
        #expect(pool?["held_batches"] as? Int == 0 && pool?["running_batches"] as? Int == 0, "\(String(describing: document))")
        _ = workers
    }
}
