import Foundation
import Testing

@Suite("compass CLI", .serialized, .timeLimit(.minutes(1)))
struct CLITests {
    @Test("compass up --check explains errors with line numbers")
    func checkReportsLines() async throws {
        let dir = TempDir()
        try "pools:\n  a:\n    tp: 3\n    gpus: [0, 1]\n    engine: nope\n".write(toFile: dir.file("bad.yaml"), atomically: true, encoding: .utf8)
        let run = try Spawned("compass", ["up", "--check", dir.file("bad.yaml")], in: dir, name: "check")
        #expect(try await run.waitForExit(timeout: 20) == .exited(2))
        let log = run.log()
        #expect(log.contains("bad.yaml:4:"), "\(log)")
        #expect(log.contains("bad.yaml:5:"), "\(log)")
    }

    @Test("compass up --dry-run: gpus 0-7 with tp 2 makes four workers with disjoint groups")
    func dryRunPartitionsGPUs() async throws {
        let dir = TempDir()
        try "pools:\n  big:\n    engine: vllm\n    model: /m\n    tp: 2\n    gpus: [0, 1, 2, 3, 4, 5, 6, 7]\n"
            .write(toFile: dir.file("t.yaml"), atomically: true, encoding: .utf8)
        let run = try Spawned("compass", ["up", "--dry-run", dir.file("t.yaml")], in: dir, name: "dry")
        #expect(try await run.waitForExit(timeout: 20).isSuccess)
        let workers = run.log().split(separator: "\n").filter { $0.contains("compass-worker") }
        #expect(workers.count == 4)
        let groups = workers.map { line -> String in
            let parts = line.split(separator: " ")
            return String(parts[parts.firstIndex(of: "--gpus")! + 1])
        }
        #expect(groups == ["0,1", "2,3", "4,5", "6,7"])
    }

    @Test("compass status with no broker running says so within its --timeout, exit status 1")
    func statusWithoutBroker() async throws {
        let dir = TempDir()
        let began = Date()
        let run = try Spawned("compass", ["status", "--broker", "ipc://\(dir.file("nobody-here"))", "--timeout", "1"], in: dir, name: "status")
        #expect(try await run.waitForExit(timeout: 15) == .exited(1))
        #expect(Date().timeIntervalSince(began) < 10)
        #expect(run.log().contains("no answer from the broker at ipc://"), "\(run.log())")
    }

    @Test("compass submit: an unreadable line gets an error result; the rest run; exit status 1")
    func submitKeepsGoingPastBadLines() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "worker")
        try await worker.waitForLog("registered with broker")
        try """
        {"custom_id": "a", "prompt": "one two"}
        this is not json
        {"custom_id": "a", "prompt": "duplicate id"}
        {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "three four"}]}}
        """.write(toFile: dir.file("in.jsonl"), atomically: true, encoding: .utf8)
        let run = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--out", dir.file("out.jsonl"), "--quiet"],
                              in: dir, name: "submit")
        #expect(try await run.waitForExit() == .exited(1))
        let lines = try String(contentsOfFile: dir.file("out.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 4)
        let text = lines.joined(separator: "\n")
        #expect(text.contains(#""text":"two one""#))
        #expect(text.contains(#""text":"four three""#))
        #expect(text.contains("line-2"))
        #expect(text.contains("duplicate custom_id"))
        #expect(run.log().contains("in.jsonl:2:"))
        // The failed requests are also in the errors file, which the summary names.
        let errors = try String(contentsOfFile: dir.file("out.errors.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(errors.count == 2)
        #expect(run.log().contains("out.errors.jsonl"))
    }

    @Test("compass submit refuses to overwrite results unless asked")
    func submitProtectsExistingResults() async throws {
        let dir = TempDir()
        try "{}".write(toFile: dir.file("in.jsonl"), atomically: true, encoding: .utf8)
        try "keep me".write(toFile: dir.file("out.jsonl"), atomically: true, encoding: .utf8)
        let run = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--out", dir.file("out.jsonl")], in: dir, name: "submit")
        #expect(try await run.waitForExit(timeout: 20) == .exited(2))
        #expect(try String(contentsOfFile: dir.file("out.jsonl"), encoding: .utf8) == "keep me")
    }
}
