import CompassClient
import CompassSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Durable broker with real processes", .serialized, .timeLimit(.minutes(5)))
struct DurabilityTests {
    @Test("SIGKILL the broker mid-run (5,000 requests, 3 workers) and restart it on its journal: every request answered once")
    func brokerCrashLosesNothing() async throws {
        let dir = TempDir()
        let fe = "ipc://\(dir.path)/fe", be = "ipc://\(dir.path)/be"
        let journalArgs = ["--journal", dir.file("journal.db")]
        var broker = try await BrokerProcess(in: dir, name: "broker1", frontend: fe, backend: be, arguments: journalArgs)
        let workers = try await startWorkers(3, be, in: dir, arguments: ["--engine-arg", "batch_ms=15"])
        let expected = try writePrompts(dir.file("in.jsonl"), count: 5000)
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", fe, "--batch-size", "16",
                                             "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        try await eventually("a third of the results") {
            ((try? String(contentsOfFile: dir.file("out.jsonl"), encoding: .utf8))?.split(separator: "\n").count ?? 0) > 1600
        }
        broker.process.child.signal(SIGKILL)
        _ = try await broker.process.waitForExit(timeout: 5)
        broker = try await BrokerProcess(in: dir, name: "broker2", frontend: fe, backend: be, arguments: journalArgs)
        let recovered = try await broker.process.waitForLog("journal opened")
        let exited = try await submit.waitForExit(timeout: 120)
        let problems = try checkResults(dir.file("out.jsonl"), expected: expected)
        #expect(exited.isSuccess, "\(submit.log())")
        #expect(problems == [])
        print("durability: broker SIGKILLed after 1,600+ of 5,000 results; restarted: \(recovered.split(separator: "]").first ?? "")")
        // Everything was acknowledged: the journal is empty again once the broker has committed the
        // producer's last ACKs (sent as it exits, so they may land a moment after it is gone).
        var pools: [[String: Any]] = []
        var reads = 0
        try await eventually("the journal to hold nothing") {
            reads += 1
            let stats = try Spawned("compass", ["journal", "stats", dir.file("journal.db"), "--json"], in: dir, name: "stats-\(reads)")
            guard try await stats.waitForExit(timeout: 20).isSuccess,
                  let document = try JSONSerialization.jsonObject(with: Data(stats.log().utf8)) as? [String: Any],
                  let read = document["pools"] as? [[String: Any]] else { return false }
            pools = read
            return pools.allSatisfy { pool in ["queued", "dispatched", "results", "failed"].allSatisfy { pool[$0] as? Int == 0 } }
        }
        for pool in pools {
            for key in ["queued", "dispatched", "results", "failed"] { #expect(pool[key] as? Int == 0, "\(key) left in the journal: \(pool)") }
        }
    }

    @Test("SIGKILL the producer mid-run, restart with --resume: nothing lost, nothing duplicated, nothing run twice")
    func producerCrashResumes() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--journal", dir.file("journal.db")])
        let workers = try await startWorkers(2, broker.backend, in: dir, arguments: ["--engine-arg", "batch_ms=20"])
        let expected = try writePrompts(dir.file("in.jsonl"), count: 2000)
        let args = ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--batch-size", "16", "--out", dir.file("out.jsonl"), "--quiet"]
        let first = try Spawned("compass", args, in: dir, name: "submit1")
        try await eventually("some results") {
            ((try? String(contentsOfFile: dir.file("out.jsonl"), encoding: .utf8))?.split(separator: "\n").count ?? 0) > 500
        }
        first.child.signal(SIGKILL)
        _ = try await first.waitForExit(timeout: 5)
        let second = try Spawned("compass", args + ["--resume"], in: dir, name: "submit2")
        #expect(try await second.waitForExit(timeout: 120).isSuccess, "\(second.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
        #expect(second.log().contains("were already in the results file"))
        // 2,000 requests are 125 batches: the resumed producer made the broker run none of them
        // again. (A worker starved of CPU past heartbeat x liveness on a loaded machine is declared
        // lost and its batches retried: those re-dispatches are counted apart, as retries.)
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let counters = try #require(try await status(client).scheduler.pools.first?.counters)
        #expect(counters.dispatched - counters.retried == 125, "dispatched \(counters.dispatched), retried \(counters.retried)")
        #expect(counters.completed == 125)
    }

    @Test("A corrupt or unwritable journal stops the broker at start with a clear error")
    func badJournalIsAClearError() async throws {
        let dir = TempDir()
        try Data(repeating: 0x7f, count: 10_000).write(to: URL(fileURLWithPath: dir.file("bad.db")))
        let corrupt = try Spawned("compass-broker", ["--frontend", "ipc://\(dir.path)/a", "--backend", "ipc://\(dir.path)/b",
                                                     "--journal", dir.file("bad.db")], in: dir, name: "corrupt")
        #expect(try await corrupt.waitForExit(timeout: 20) == .exited(1))
        #expect(corrupt.log().contains("corrupt"), "\(corrupt.log())")
        let missing = try Spawned("compass-broker", ["--frontend", "ipc://\(dir.path)/c", "--backend", "ipc://\(dir.path)/d",
                                                     "--journal", "/nonexistent/dir/j.db"], in: dir, name: "missing")
        #expect(try await missing.waitForExit(timeout: 20) == .exited(1))
        #expect(missing.log().contains("/nonexistent/dir"), "\(missing.log())")
    }
}
