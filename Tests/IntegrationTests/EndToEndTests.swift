import CompassClient
import CompassProtocol
import CompassSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("End to end with real processes", .serialized, .timeLimit(.minutes(3)))
struct EndToEndTests {
    @Test("2 workers, 2,000 requests in batches of 16 through compass submit: each custom_id once, correct text")
    func twoWorkersTwoThousandRequests() async throws {
        let dir = TempDir()
        let broker = try BrokerProcess(in: dir)
        let workers = try startWorkers(2, broker.backend, in: dir, prefix: "worker")
        let expected = try writePrompts(dir.file("in.jsonl"), count: 2000)
        let started = Date()
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--pool", "default", "--broker", broker.frontend,
                                             "--batch-size", "16", "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        let exit = try submit.waitForExit()
        let seconds = Date().timeIntervalSince(started)
        #expect(exit.isSuccess, "\(submit.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
        #expect(submit.log().contains("2000 requests in 125 batches"))
        print("end-to-end: 2000 requests via compass submit (debug build, 2 workers) in \(String(format: "%.2f", seconds)) s, process start included")
    }

    @Test("A worker started after submission receives the queued work at once")
    func horizontalScale() async throws {
        let dir = TempDir()
        let broker = try BrokerProcess(in: dir)
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let requests = (0..<4).map { InferenceRequest(customID: "r\($0)", prompt: "late worker \($0)") }
        let tasks = (0..<4).map { i in Task { try await client.submit([requests[i]], pool: "default", batchID: "scale-\(i)") } }
        try await eventually("4 batches queued with no worker") {
            try await status(client).scheduler.pools.first { $0.name == "default" }?.queuedBatches == 4
        }
        let worker = try startWorker(broker.backend, in: dir, name: "late")
        for (i, task) in tasks.enumerated() {
            let outcome = try await task.value
            #expect(try outcome.results().map(\.text) == ["\(i) worker late"])
        }
        let s = try await status(client)
        #expect(s.scheduler.workers.count == 1)
        #expect(s.scheduler.workers.first?.completed == 4)
        _ = worker
    }

    @Test("SIGTERM drains a worker: its running batch completes, it says BYE and exits 0")
    func workerDrainsOnSIGTERM() async throws {
        let dir = TempDir()
        let broker = try BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "drainer", arguments: ["--engine-arg", "batch_ms=2000"])
        try worker.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        // The deadline makes a lost result fail the test (FAILED timeout) instead of hanging it.
        let task = Task { try await client.submit([InferenceRequest(customID: "d", prompt: "finish me please")], pool: "default",
                                                  batchID: "drain-1", deadlineMilliseconds: 20_000) }
        try await eventually("the batch to run") { try await status(client).scheduler.workers.first?.running == ["drain-1"] }
        worker.child.signal(SIGTERM)
        let outcome = try await task.value
        #expect(try outcome.results().first?.text == "please me finish")
        #expect(outcome.attempts == 1)
        #expect(try worker.waitForExit(timeout: 10) == .exited(0))
        #expect(worker.log().contains("draining"))
        try await eventually("the broker to forget the drained worker") { try await status(client).scheduler.workers.isEmpty }
        // The worker exits right after its last RESULT: the broker, which sees the connection drop,
        // must read that RESULT before it probes for the lost worker, or it drops it as stale.
        let counters = try #require(try await status(client).scheduler.pools.first?.counters)
        #expect(counters.staleDropped == 0 && counters.retried == 0, "\(counters)")
    }
}
