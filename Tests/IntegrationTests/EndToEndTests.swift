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
        let broker = try await BrokerProcess(in: dir)
        let workers = try await startWorkers(2, broker.backend, in: dir, prefix: "worker")
        let expected = try writePrompts(dir.file("in.jsonl"), count: 2000)
        let started = Date()
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--pool", "default", "--broker", broker.frontend,
                                             "--batch-size", "16", "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        let exit = try await submit.waitForExit()
        let seconds = Date().timeIntervalSince(started)
        #expect(exit.isSuccess, "\(submit.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
        #expect(submit.log().contains("2000 requests in 125 batches"))
        print("end-to-end: 2000 requests via compass submit (debug build, 2 workers) in \(String(format: "%.2f", seconds)) s, process start included")
    }

    @Test("Scoring and generation requests mixed in batches through compass submit: each scored once, exactly")
    func scoringThroughSubmit() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let workers = try await startWorkers(2, broker.backend, in: dir, prefix: "worker")
        // Item i: context "w0 .. w<i%5> q<i>", choices: the greedy one (the context's last two
        // words, reversed: the start of the synthetic model's completion, -0.125 a word) and two
        // that are not (minus their length).
        var lines: [String] = []
        var expected: [String: [ContinuationScore]] = [:]
        for i in 0..<300 {
            let words = (0...(i % 5)).map { "w\($0)" } + ["q\(i)"]
            if i % 3 == 0 {  // a generation request between the scoring ones
                lines.append(#"{"custom_id":"g\#(i)","prompt":"\#(words.joined(separator: " "))","max_tokens":2,"logprobs":1}"#)
                continue
            }
            let greedy = " " + words.reversed().prefix(2).joined(separator: " ")
            lines.append(#"{"custom_id":"s\#(i)","prompt":"\#(words.joined(separator: " ")) ","continuations":["\#(greedy)","zz","\#(i)"]}"#)
            expected["s\(i)"] = [ContinuationScore(logprob: -0.25, tokens: 2, greedy: true),
                                  ContinuationScore(logprob: -2, tokens: 1, greedy: false),
                                  ContinuationScore(logprob: -Double(String(i).count), tokens: 1, greedy: false)]
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir.file("in.jsonl"), atomically: true, encoding: .utf8)
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--pool", "default", "--broker", broker.frontend,
                                             "--batch-size", "16", "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        #expect(try await submit.waitForExit().isSuccess, "\(submit.log())")
        var seen: Set<String> = []
        for line in try String(contentsOfFile: dir.file("out.jsonl"), encoding: .utf8).split(separator: "\n") {
            let result = try JSONDecoder().decode(InferenceResult.self, from: Data(line.utf8))
            #expect(seen.insert(result.customID).inserted, "\(result.customID) answered twice")
            #expect(result.error == nil, "\(line)")
            if result.customID.hasPrefix("g") {
                #expect(result.logprobs?.tokenLogprobs == [-0.125, -0.125] && result.scores == nil, "\(line)")
            } else {
                #expect(result.finishReason == "score" && result.scores == expected[result.customID], "\(line)")
            }
        }
        #expect(seen.count == 300)
        _ = workers
    }

    @Test("A worker started after submission receives the queued work at once")
    func horizontalScale() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
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
        let broker = try await BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "drainer", arguments: ["--engine-arg", "batch_ms=2000"])
        try await worker.waitForLog("registered with broker")
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
        #expect(try await worker.waitForExit(timeout: 10) == .exited(0))
        #expect(worker.log().contains("draining"))
        try await eventually("the broker to forget the drained worker") { try await status(client).scheduler.workers.isEmpty }
        // The worker exits right after its last RESULT: the broker, which sees the connection drop,
        // must read that RESULT before it probes for the lost worker, or it drops it as stale.
        let counters = try #require(try await status(client).scheduler.pools.first?.counters)
        #expect(counters.staleDropped == 0 && counters.retried == 0, "\(counters)")
    }
}
