import CompassClient
import CompassProtocol
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Keeping the engine full", .serialized, .timeLimit(.minutes(5)))
struct AdmissionTests {
    /// The engine's own step counts, as the worker logs them (`engine statistics`).
    struct EngineSample {
        var steps: Int
        var sequenceSteps: Int
        var completed: Int
    }

    static func samples(_ log: String) -> [EngineSample] {
        log.split(separator: "\n").filter { $0.contains("engine statistics") }.compactMap { line in
            var fields: [String: Int] = [:]
            for token in line.split(separator: " ") {
                let parts = token.split(separator: "=", maxSplits: 1)
                if parts.count == 2, let value = Int(parts[1]) { fields[String(parts[0])] = value }
            }
            guard let steps = fields["steps"], let sequenceSteps = fields["sequence_steps"], let completed = fields["completed"] else { return nil }
            return EngineSample(steps: steps, sequenceSteps: sequenceSteps, completed: completed)
        }
    }

    /// Prompts of 30 words whose completions are 8 to 24 tokens long (varied, as real completions are).
    static func writePrompts(_ path: String, count: Int) throws -> [String: String] {
        var lines: [String] = []
        var expected: [String: String] = [:]
        for i in 0..<count {
            let words = (0..<30).map { "w\($0 * 7 % 11)x\(i)" }
            let maxTokens = 8 + (i * 5) % 17
            let request = InferenceRequest(customID: "req-\(i)", prompt: words.joined(separator: " "), maxTokens: maxTokens)
            lines.append(String(decoding: try JSONEncoder().encode(request), as: UTF8.self))
            expected["req-\(i)"] = words.reversed().prefix(maxTokens).joined(separator: " ")
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return expected
    }

    @Test("3,000 one-request batches through compass submit keep a continuous engine of 64 sequences at least 90 % full; each answered once")
    func oneRequestBatchesKeepTheEngineFull() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let capacity = 64
        // Steps of about 18 ms: the engine then takes some 220 requests a second, well below what a
        // debug build of producer, broker and worker carries on a loaded 2-core machine, so what is
        // measured is admission, not whether the pipeline keeps up with a fast engine (bench/run
        // measures that, in release, at capacity 256).
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: [
            "--engine-arg", "capacity=\(capacity)", "--engine-arg", "step_us=15000", "--engine-arg", "seq_us=50",
            "--stats-interval-ms", "200"])
        try await worker.waitForLog("registered with broker")
        let count = 3000
        let expected = try Self.writePrompts(dir.file("in.jsonl"), count: count)
        let started = Date()
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--batch-size", "1",
                                             "--window", "256", "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        #expect(try await submit.waitForExit(timeout: 240).isSuccess, "\(submit.log())")
        let seconds = Date().timeIntervalSince(started)
        #expect(submit.log().contains("\(count) requests in \(count) batches"), "\(submit.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
        // Steady state: from the report after 15 % of the batches were answered to the last before
        // 85 %, while the producer keeps 256 batches in flight. The engine counted the steps it ran
        // and the sequences in each; the clock does not enter.
        let all = Self.samples(worker.log())
        let steady = all.filter { $0.completed >= count * 15 / 100 && $0.completed <= count * 85 / 100 }
        let first = try #require(steady.first, "no engine statistics in steady state: \(all)")
        let last = try #require(steady.last)
        #expect(last.steps - first.steps > 100, "too few steps between \(first) and \(last)")
        let occupancy = Double(last.sequenceSteps - first.sequenceSteps) / Double((last.steps - first.steps) * capacity)
        print("""
            engine full: \(count) one-request batches in \(String(format: "%.1f", seconds)) s; engine occupancy \
            \(String(format: "%.3f", occupancy)) of \(capacity) sequences over \(last.steps - first.steps) steps \
            (batches \(first.completed)…\(last.completed))
            """)
        #expect(occupancy >= 0.9, "occupancy \(occupancy): \(steady)")
    }

    /// An engine process that declares `capacity` 16 in its `ready` and answers only once it holds
    /// 16 batches at once (or 5 s passed): each result's `stats.engine` says how many it held.
    static let probeEngine = #"""
    import json, os, select, sys, time
    IN, OUT, CAP = int(os.environ["COMPASS_ENGINE_IN"]), int(os.environ["COMPASS_ENGINE_OUT"]), 16
    def send(m):
        os.write(OUT, (json.dumps(m) + "\n").encode())
    send({"type": "ready", "model": "", "detail": "capacity probe", "start_method": "none", "capacity": CAP, "capacity_tokens": 4096})
    held, buf, steps, seq, deadline = [], b"", 0, 0, 0.0
    while True:
        r, _, _ = select.select([IN], [], [], max(0.0, deadline - time.monotonic()) if held else None)
        if r:
            data = os.read(IN, 1 << 16)
            if not data:
                sys.exit(0)
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                m = json.loads(line) if line.strip() else {}
                if m.get("type") == "batch":
                    deadline = deadline if held else time.monotonic() + 5
                    held.append(m)
                elif m.get("type") == "shutdown":
                    sys.exit(0)
        if held and (len(held) >= CAP or time.monotonic() >= deadline):
            steps, seq = steps + 1, seq + len(held)
            for b in held:
                results = [{"custom_id": q["custom_id"], "text": "ok", "prompt_tokens": 1, "completion_tokens": 1,
                            "finish_reason": "stop", "error": None} for q in b["requests"]]
                send({"type": "result", "batch_id": b["batch_id"], "attempt": b["attempt"], "results": results,
                      "stats": {"engine_ms": 1.0, "engine": {"capacity": CAP, "steps": steps, "sequence_steps": seq,
                                                              "occupancy": len(held) / CAP}}})
            held = []
    """#

    @Test("An engine process that declares capacity 16 gets 16 one-request batches at once; its counts reach the producer")
    func aProcessEngineDeclaresItsCapacity() async throws {
        let dir = TempDir()
        try Self.probeEngine.write(toFile: dir.file("probe.py"), atomically: true, encoding: .utf8)
        let broker = try await BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: [
            "--engine", "exec", "--engine-arg", "command=python3 \(dir.file("probe.py"))"])
        try await worker.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let caps = try #require(try await status(client).workers.first?.capabilities)
        #expect(caps.capacity == 16 && caps.capacityTokens == 4096 && caps.creditMode == .explicit, "\(caps)")
        let outcomes = try await withThrowingTaskGroup(of: BatchOutcome.self) { group in
            for i in 0..<64 {
                group.addTask { try await client.submit([InferenceRequest(customID: "p\(i)", prompt: "x")], pool: "default", batchID: "probe-\(i)") }
            }
            var all: [BatchOutcome] = []
            for try await o in group { all.append(o) }
            return all
        }
        #expect(outcomes.count == 64)
        #expect(try outcomes.allSatisfy { try $0.results().first?.text == "ok" })
        // A worker that admitted batch by batch would give this engine 1 (or max_batches) at a time,
        // and every answer would come after the 5 s wait with occupancy 1/16.
        let full = outcomes.filter { ($0.stats()?.engine?.occupancy ?? 0) >= 1 }.count
        #expect(full >= 48, "\(full) of 64 batches were answered in a round of 16 or more: \(outcomes.map { $0.stats()?.engine?.occupancy ?? -1 })")
    }

    @Test("A worker paused past its liveness while it holds hundreds of one-request batches registers again once; every request is answered once")
    func aPausedFullWorkerRecovers() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: [
            "--engine-arg", "capacity=64", "--engine-arg", "step_us=15000", "--engine-arg", "seq_us=50", "--read-ahead", "200"])
        try await worker.waitForLog("registered with broker")
        let count = 1500
        let expected = try Self.writePrompts(dir.file("in.jsonl"), count: count)
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--batch-size", "1",
                                             "--window", "512", "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        // Once the worker holds its fill (64 inside, 64 queued in the engine, 200 held), stop it for
        // longer than the broker's liveness (300 ms): the broker declares it lost and requeues all of
        // them, then answers every message the worker sent meanwhile with DISCONNECT.
        try await eventually("the worker to hold more than 200 batches") {
            let s = try await status(client)
            return (s.scheduler.pools.first?.counters.completed ?? 0) > 100 && (s.scheduler.workers.first?.running.count ?? 0) > 200
        }
        worker.child.signal(SIGSTOP)
        try await eventually("the broker to declare the stopped worker lost") {
            (try await status(client).scheduler.pools.first?.counters.retried ?? 0) > 0
        }
        worker.child.signal(SIGCONT)
        #expect(try await submit.waitForExit(timeout: 240).isSuccess, "\(submit.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
        let registrations = worker.log().components(separatedBy: "registered with broker").count - 1
        print("paused full worker: registered \(registrations) times; \(try await status(client).scheduler.pools.first?.counters.retried ?? 0) batches requeued")
        #expect(registrations == 2, "one registration at the start and one after the pause, not one per DISCONNECT: \(registrations)")
    }
}
