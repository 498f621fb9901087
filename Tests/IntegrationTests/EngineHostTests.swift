import CompassClient
import CompassProtocol
import CompassSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Engines as supervised processes", .serialized, .timeLimit(.minutes(5)))
struct EngineHostTests {
    func worker(_ backend: String, _ dir: TempDir, _ name: String, _ arguments: [String]) throws -> Spawned {
        try Spawned("compass-worker", ["--broker", backend, "--pool", "default"] + arguments, in: dir, name: name,
                    environment: try engineEnvironment())
    }

    @Test("The exec engine (bin/engines/example_engine.py) serves a pool end to end")
    func execEngine() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let w = try worker(broker.backend, dir, "exec", try exampleEngineArguments())
        try await w.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let outcome = try await client.submit([InferenceRequest(customID: "a", prompt: "hello engine"),
                                               InferenceRequest(customID: "b", messages: [ChatMessage(role: "user", content: "chat too")])],
                                              pool: "default")
        #expect(try outcome.results().map(\.text) == ["HELLO ENGINE", "CHAT TOO"])
        #expect(w.log().contains("engine process started"))
    }

    @Test("The hf engine runs a tiny random Llama on CPU through broker and worker")
    func hfEngineOnTinyModel() async throws {
        let model = try await TinyModel.shared.directory()
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let w = try worker(broker.backend, dir, "hf", ["--engine", "hf", "--model", model, "--engine-arg", "max_tokens=8"])
        try await w.waitForLog("registered with broker", timeout: 120)
        let client = try testClient(broker.frontend)
        defer { client.close() }
        var batch = (0..<12).map { InferenceRequest(customID: "p\($0)", prompt: "The broker hands out batch number \($0)", maxTokens: 6) }
        batch.append(InferenceRequest(customID: "chat", messages: [ChatMessage(role: "user", content: "What is a queue?")], maxTokens: 5))
        let first = try await client.submit(batch, pool: "default")
        let results = try first.results()
        #expect(results.map(\.customID) == batch.map(\.customID))
        for r in results {
            #expect(r.error == nil, "\(r.customID): \(String(describing: r.error))")
            #expect(r.promptTokens > 0)
            #expect(r.completionTokens > 0 && r.completionTokens <= (r.customID == "chat" ? 5 : 6))
        }
        // Greedy decoding: the same prompts give the same texts again.
        let again = try await client.submit(batch, pool: "default", batchID: "again")
        #expect(try again.results().map(\.text) == results.map(\.text))
        #expect(first.stats()?.completionTokens == results.reduce(0) { $0 + $1.completionTokens })
    }

    @Test("SIGKILL of the engine mid-batch: detected, classified engine_dead, engine restarted, batch completed")
    func engineKilledMidBatch() async throws {
        let model = try await TinyModel.shared.directory()
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let w = try worker(broker.backend, dir, "hf", ["--engine", "hf", "--model", model, "--engine-arg", "batch_size=4"])
        try await w.waitForLog("registered with broker", timeout: 120)
        let client = try testClient(broker.frontend)
        defer { client.close() }
        // Long enough to be killed in the middle: 48 requests in micro-batches of 4, 48 tokens each.
        let batch = (0..<48).map { InferenceRequest(customID: "k\($0)", prompt: "request \($0) of a long batch", maxTokens: 48) }
        let task = Task { try await client.submit(batch, pool: "default", batchID: "kill-me") }
        try await eventually("the engine to report progress on the batch") {
            (try await status(client).scheduler.workers.first?.progress["kill-me"]?.first ?? 0) > 0
        }
        let pid = try await enginePID(w)
        kill(-pid, SIGKILL)
        let outcome = try await task.value
        #expect(try outcome.results().count == 48)
        #expect(try outcome.results().allSatisfy { $0.error == nil })
        let log = w.log()
        // Seen 3 times at 4 to 37 attempts while other suites ran beside this one on a loaded machine
        // (never alone, nor under 4 CPU burners): the worker's and the broker's logs say why next time.
        #expect(outcome.attempts == 2, "worker log:\n\(log.suffix(6000))\nbroker log:\n\(broker.process.log().suffix(4000))")
        #expect(log.contains("engine died") && log.contains("code=engine_dead"))
        #expect(log.components(separatedBy: "engine ready").count - 1 == 2, "the engine was not restarted once")
    }

    @Test("An engine that never becomes ready hits the startup deadline; the worker gives up with a clear error")
    func startupDeadline() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let w = try worker(broker.backend, dir, "never", try exampleEngineArguments([
            "--engine-arg", "never_ready=1", "--startup-timeout-ms", "400", "--max-start-failures", "2"]))
        #expect(try await w.waitForExit(timeout: 30) == .exited(3))
        let log = w.log()
        #expect(log.contains("the engine was not ready within 400 ms"))
        #expect(log.contains("failed to start 2 times in a row; giving up"))
    }

    @Test("Two workers cannot own the same GPU: the second is refused, naming the first's pid")
    func gpuClaimsAreExclusive() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let locks = ["--lock-dir", dir.file("locks")]
        let first = try startWorker(broker.backend, in: dir, name: "first", arguments: ["--gpus", "3"] + locks)
        try await first.waitForLog("registered with broker")
        let second = try startWorker(broker.backend, in: dir, name: "second", arguments: ["--gpus", "3"] + locks)
        #expect(try await second.waitForExit(timeout: 20) == .exited(2))
        #expect(second.log().contains("GPU 3 is already claimed by pid \(first.pid)"), "\(second.log())")
        // A group of the wrong size is refused too.
        let wrong = try startWorker(broker.backend, in: dir, name: "wrong", arguments: ["--tp", "2", "--gpus", "4"] + locks)
        #expect(try await wrong.waitForExit(timeout: 20) != .exited(0))
        #expect(wrong.log().contains("--tp is 2"))
    }

    @Test("--gpus auto takes free GPUs among CUDA_VISIBLE_DEVICES and refuses when none are left")
    func gpusAuto() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let env = ["CUDA_VISIBLE_DEVICES": "3,4"]
        let args = ["--broker", broker.backend, "--pool", "default", "--gpus", "auto", "--lock-dir", dir.file("locks")]
        let first = try Spawned("compass-worker", args, in: dir, name: "first", environment: env)
        try await first.waitForLog("registered with broker")
        let second = try Spawned("compass-worker", args, in: dir, name: "second", environment: env)
        try await second.waitForLog("registered with broker")
        #expect(first.log().contains("gpus=[3]"), "\(first.log())")
        #expect(second.log().contains("gpus=[4]"), "\(second.log())")
        let third = try Spawned("compass-worker", args, in: dir, name: "third", environment: env)
        #expect(try await third.waitForExit(timeout: 20) == .exited(2))
        #expect(third.log().contains("--gpus auto needs 1 free GPUs; only 0 of 2"), "\(third.log())")
    }

    @Test("An engine left running by a SIGKILLed worker is killed by the next worker that claims its GPU")
    func orphanedEngineIsReaped() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let locks = ["--lock-dir", dir.file("locks")]
        // An engine that does not exit when its worker goes (stuck, as in a CUDA call).
        let stuck = ["--engine-arg", "stuck_after_eof=1", "--gpus", "5"] + locks
        let first = try worker(broker.backend, dir, "first", try exampleEngineArguments(stuck))
        let enginePid = try await enginePID(first)
        try await first.waitForLog("registered with broker")
        kill(first.pid, SIGKILL)
        _ = try await first.waitForExit(timeout: 10)
        #expect(processAlive(enginePid), "the stuck engine should outlive its SIGKILLed worker (its own process group)")
        let second = try worker(broker.backend, dir, "second", try exampleEngineArguments(["--gpus", "5"] + locks))
        try await second.waitForLog("killed an engine left running by a dead worker")
        try await second.waitForLog("registered with broker")
        #expect(try await waitGone(enginePid, seconds: 4), "the orphaned engine \(enginePid) is still alive")
    }

    @Test("A SIGKILLed worker's compass_engine engine exits by itself: end of file on its request pipe, stderr unread")
    func engineExitsWhenItsWorkerIsKilled() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let scripted = "command=\(try enginePython()) \(repositoryRoot)/bin/engines/tests/scripted_engine.py"
        let first = try worker(broker.backend, dir, "first", ["--engine", "exec", "--engine-arg", scripted])
        let enginePid = try await enginePID(first)
        try await first.waitForLog("registered with broker")
        kill(first.pid, SIGKILL)
        _ = try await first.waitForExit(timeout: 10)
        #expect(try await waitGone(enginePid, seconds: 10), "the engine \(enginePid) outlived its SIGKILLed worker")
    }

    func enginePID(_ worker: Spawned) async throws -> Int32 {
        let started = try await worker.waitForLog("engine process started")
        return try #require(started.split(separator: " ").first { $0.hasPrefix("pid=") }.flatMap { Int32($0.dropFirst(4)) })
    }

    /// Whether `pid` is a live process (not gone, not a zombie waiting for init to reap it).
    func processAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
        // The state follows the ")" that ends the command name.
        guard let close = stat.lastIndex(of: ")") else { return true }
        return !stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
    }

    /// Waits up to `seconds` for `pid` to be gone; true if it went.
    func waitGone(_ pid: Int32, seconds: Double) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while processAlive(pid) {
            if Date() > deadline { return false }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        return true
    }
}
