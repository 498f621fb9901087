import CompassProtocol
import CompassSystem
import Foundation
import Logging
import Synchronization
import Testing
@testable import CompassEngines

#if canImport(Glibc)
import Glibc
#endif

/// The engine supervisor against real child processes (small /bin/sh engines). Waits are bounded and
/// wait for an event (a semaphore, the engine's event fd, the generation's end), never for time.
@Suite("Process engine: one owner per engine process", .serialized, .timeLimit(.minutes(2)))
struct ProcessEngineTests {
    init() { signal(SIGPIPE, SIG_IGN) } // as every compass process does: a dead engine's fd 3 must not kill us

    static let logger: Logger = {
        var l = Logger(label: "test.engine")
        l.logLevel = .error
        return l
    }()

    func engine(_ script: String, hooks: EngineHooks = EngineHooks()) throws -> ProcessEngine {
        try ProcessEngine(name: "sh", command: EngineCommand(executable: "/bin/sh", arguments: ["-c", script], environment: ["PATH": "/usr/bin:/bin"]),
                          logger: Self.logger, hooks: hooks)
    }

    /// The next events, waiting on the engine's event fd (at most `timeout` seconds).
    func events(_ engine: ProcessEngine, count: Int, timeout: Int32 = 20) -> [EngineEvent] {
        var got: [EngineEvent] = []
        let deadline = MonotonicClock.milliseconds() + UInt64(timeout) * 1000
        while got.count < count, MonotonicClock.milliseconds() < deadline {
            var p = pollfd(fd: engine.eventFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 1000)
            got += engine.takeEvents()
        }
        return got
    }

    /// Whether process group `pid` is gone within 20 s. Its members were SIGKILLed when their
    /// generation ended, but dying and being reaped (by init: they are orphans) takes a moment.
    func groupGone(_ pid: Int32) async throws -> Bool {
        let deadline = MonotonicClock.milliseconds() + 20_000
        while kill(-pid, 0) == 0 {
            if MonotonicClock.milliseconds() > deadline { return false }
            try await Task.sleep(nanoseconds: 20_000_000)  // not usleep: the tests' shared threads stay free
        }
        return true
    }

    // An engine that ignores SIGTERM and has a child of its own in its group: only SIGKILL ends it.
    static let stubborn = #"trap '' TERM; sleep 1000 & wait; wait"#

    @Test("A stop() between the decision to spawn and the spawn still kills the process group, and the next start waits for it")
    func stopDuringStart() async throws {
        let engineBox = Mutex<ProcessEngine?>(nil)
        let pids = Mutex<[Int32]>([])
        let decided = DispatchSemaphore(value: 0)
        let secondStart = DispatchSemaphore(value: 0)
        let secondSpawned = DispatchSemaphore(value: 0)
        let firstGroupAliveAtSecondStart = Mutex<Bool?>(nil)
        var hooks = EngineHooks(
            beforeStart: {
                // The second generation checks that the first one's group is gone before it spawns.
                guard let first = pids.withLock({ $0.first }) else { return }
                firstGroupAliveAtSecondStart.withLock { $0 = kill(-first, 0) == 0 }
                secondStart.signal()
            },
            onSpawn: { pid in
                if pids.withLock({ $0.append(pid); return $0.count }) == 2 { secondSpawned.signal() }
            },
            stopGraceSeconds: 0.2)
        let calls = Mutex(0)
        hooks.afterSpawnDecision = {
            // The first generation is stopped exactly here: it has decided to spawn and not yet spawned.
            guard calls.withLock({ $0 += 1; return $0 }) == 1 else { return }
            engineBox.withLock { $0 }?.stop()
            decided.signal()
        }
        let e = try engine(Self.stubborn, hooks: hooks)
        engineBox.withLock { $0 = e }
        try e.start()
        #expect(decided.wait(timeout: .now() + 20) == .success)
        #expect(e.waitUntilEnded(timeoutSeconds: 20), "the stopped generation did not end")
        let first = try #require(pids.withLock { $0.first }, "the process was spawned after the stop decision")
        #expect(try await groupGone(first), "the stopped engine's group is still alive")

        try e.start()
        #expect(secondStart.wait(timeout: .now() + 20) == .success)
        #expect(firstGroupAliveAtSecondStart.withLock { $0 } == false, "the next start did not wait for the stopped group")
        #expect(secondSpawned.wait(timeout: .now() + 20) == .success)
        e.stop()
        #expect(e.waitUntilEnded(timeoutSeconds: 20))
        let second = try #require(pids.withLock { $0.count == 2 ? $0[1] : nil })
        #expect(try await groupGone(second))
        #expect(e.takeEvents().isEmpty, "a stopped generation posts nothing")
    }

    @Test("A stop() before the spawn decision spawns nothing")
    func stopBeforeSpawn() throws {
        let engineBox = Mutex<ProcessEngine?>(nil)
        let spawned = Mutex(0)
        let hooks = EngineHooks(beforeStart: { engineBox.withLock { $0 }?.stop() }, onSpawn: { _ in spawned.withLock { $0 += 1 } })
        let e = try engine(Self.stubborn, hooks: hooks)
        engineBox.withLock { $0 = e }
        try e.start()
        #expect(e.waitUntilEnded(timeoutSeconds: 20))
        #expect(spawned.withLock { $0 } == 0)
        #expect(e.takeEvents().isEmpty)
    }

    @Test("A start without a stop replaces the running engine: its group is killed before the new one spawns")
    func startReplaces() async throws {
        let pids = Mutex<[Int32]>([])
        let e = try engine(#"trap '' TERM; printf '{"type":"ready"}\n' >&4; sleep 1000 & wait; wait"#,
                           hooks: EngineHooks(onSpawn: { pid in pids.withLock { $0.append(pid) } }, stopGraceSeconds: 0.2))
        try e.start()
        #expect(events(e, count: 1).count == 1)
        try e.start()
        #expect(events(e, count: 1).count == 1, "the second generation became ready")
        let both = pids.withLock { $0 }
        #expect(both.count == 2)
        #expect(try await groupGone(both[0]))
        e.stop()
        #expect(e.waitUntilEnded(timeoutSeconds: 20))
    }

    @Test("A result's results pass on as the bytes the engine wrote; counts in stats are taken as sent")
    func resultPassesThrough() throws {
        let results = #"[{"custom_id": "q1", "text": "caf\u00e9 \"x\"", "prompt_tokens": 3, "completion_tokens": 2, "finish_reason": "stop", "error": null}, {"custom_id": "q2", "text": null, "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": null, "error": {"code": "bad_request", "message": "no"}}]"#
        let result = #"{"type": "result", "batch_id": "b\/1", "attempt": 2, "results": \#(results), "stats": {"engine_ms": 12.5, "requests": 2, "failed_requests": 1, "prompt_tokens": 7, "completion_tokens": 5, "engine": {"capacity": 4, "steps": 10, "sequence_steps": 30, "occupancy": 0.75}}}"#
        let script = #"""
        printf '%s\n' '{"type": "ready", "model": "m", "capacity": 4, "capacity_tokens": 100}' >&4
        IFS= read -r line <&3
        printf '%s\n' '{"type": "progress", "batch_id": "b/1", "attempt": 2, "done": 1, "total": 2}' >&4
        printf '%s\n' '\#(result)' >&4
        IFS= read -r line <&3
        """#
        let e = try engine(script)
        try e.start()
        guard case .ready(_, let capacity) = events(e, count: 1).first else { Issue.record("no ready"); return }
        #expect(capacity == EngineCapacity(sequences: 4, tokens: 100))
        e.submit(EngineJob(batchID: "b/1", attempt: 2, meta: BatchMeta(), payload: Array(#"[{"custom_id":"q1","prompt":"a"}]"#.utf8)))
        let got = events(e, count: 2)
        #expect(got.count == 2)
        guard got.count == 2, case .progress("b/1", 2, 1, 2) = got[0], case .finished(let id, let attempt, let payload, let stats) = got[1] else {
            Issue.record("unexpected events \(got)")
            return
        }
        #expect(id == "b/1" && attempt == 2)
        #expect(payload == Array(results.utf8))
        #expect(stats == ResultStats(requests: 2, failedRequests: 1, promptTokens: 7, completionTokens: 5, engineMilliseconds: 12.5, worker: "sh",
                                     engine: EngineStepStats(capacity: 4, steps: 10, sequenceSteps: 30, occupancy: 0.75)))
        e.stop()
        #expect(e.waitUntilEnded(timeoutSeconds: 20))
    }

    @Test("A batch larger than the pipe reaches the engine whole, on one line, after what was queued before it")
    func largeBatchIsWrittenWhole() throws {
        let script = #"""
        printf '{"type": "ready"}\n' >&4
        IFS= read -r first <&3
        IFS= read -r line <&3
        printf '{"type": "failed", "batch_id": "%s", "attempt": 1, "code": "engine_error", "message": "m"}\n' "${#line}" >&4
        IFS= read -r line <&3
        """#
        let e = try engine(script)
        try e.start()
        #expect(events(e, count: 1).count == 1)
        let payload = Array("[{\"custom_id\":\"a\",\r\n\"prompt\":\"\(String(repeating: "y", count: 300_000))\"}]".utf8)
        e.cancel(batchID: "before", attempt: 1)
        e.submit(EngineJob(batchID: "big", attempt: 1, meta: BatchMeta(), payload: payload))
        let expected = #"{"type":"batch","batch_id":"big","attempt":1,"deadline_ms":0,"requests":"#.utf8.count + payload.count + 1
        guard case .failed(let length, 1, .engineError, _, _) = events(e, count: 1).first else { Issue.record("no answer"); return }
        #expect(length == "\(expected)")
        e.stop()
        #expect(e.waitUntilEnded(timeoutSeconds: 20))
    }

    @Test("Without counts in stats (or with wrong ones) they are counted from the results")
    func statsCountedWhenAbsentOrWrong() throws {
        let e = try engine("exit 0")
        let results = Array(#"[{"custom_id":"a","text":"A","prompt_tokens":2,"completion_tokens":3,"error":null},{"custom_id":"b","text":null,"prompt_tokens":1,"completion_tokens":0,"error":{"code":"unsupported","message":"x"}}]"#.utf8)
        let counted = ResultStats(requests: 2, failedRequests: 1, promptTokens: 3, completionTokens: 3, engineMilliseconds: 4, worker: "sh")
        results.withUnsafeBytes { raw in
            #expect(e.resultStats(sent: ["engine_ms": 4.0], results: raw, count: 2) == counted)
            #expect(e.resultStats(sent: ["engine_ms": 4.0, "requests": 5, "failed_requests": 0, "prompt_tokens": 1, "completion_tokens": 1], results: raw, count: 2) == counted)
            #expect(e.resultStats(sent: ["engine_ms": 4.0, "requests": 2, "failed_requests": -1, "prompt_tokens": 1, "completion_tokens": 1], results: raw, count: 2) == counted)
        }
    }

    @Test("Lines that are not protocol messages are ignored; a line split across reads is whole")
    func linesAndGarbage() throws {
        let long = String(repeating: "x", count: 100_000)
        let script = #"""
        printf 'not json\n{"type": 3}\n{"type": "ready", "detail": "d"}\n' >&4
        printf '{"type": "failed", "batch_id": "%s", "attempt": 1, "code": "oom", "message": "m"}\n' "\#(long)" >&4
        IFS= read -r line <&3
        """#
        let e = try engine(script)
        try e.start()
        let got = events(e, count: 2)
        guard got.count == 2, case .ready("d", _) = got[0], case .failed(let id, 1, .oom, true, "m") = got[1] else {
            Issue.record("unexpected events \(got)")
            return
        }
        #expect(id == long)
        e.stop()
        #expect(e.waitUntilEnded(timeoutSeconds: 20))
    }

    @Test("A dying engine is classified by its fatal word, else by its last output, read to the end first")
    func deathIsClassified() throws {
        let oom = try engine(#"printf '{"type": "ready"}\n' >&4; echo 'RuntimeError: CUDA out of memory' >&2; exit 1"#)
        try oom.start()
        let a = events(oom, count: 2)
        guard a.count == 2, case .died(.oom, let message) = a[1] else { Issue.record("unexpected events \(a)"); return }
        #expect(message.contains("exited with status 1"))

        let fatal = try engine(#"printf '{"type": "fatal", "code": "startup_failed", "message": "no model"}\n' >&4; exit 2"#)
        try fatal.start()
        guard case .died(.startupFailed, let why) = events(fatal, count: 1).first else { Issue.record("no died"); return }
        #expect(why.hasPrefix("no model"))

        let early = try engine("exit 0")
        try early.start()
        guard case .died(.startupFailed, _) = events(early, count: 1).first else { Issue.record("no died"); return }
    }

    @Test("A stopped engine that ignores SIGTERM is SIGKILLed after the grace, with everything it started")
    func stopKillsTheGroup() async throws {
        let pid = Mutex<Int32?>(nil)
        let e = try engine(#"trap '' TERM; printf '{"type": "ready"}\n' >&4; sleep 1000 & wait; wait"#,
                           hooks: EngineHooks(onSpawn: { p in pid.withLock { $0 = p } }, stopGraceSeconds: 0.2))
        try e.start()
        #expect(events(e, count: 1).count == 1)
        e.stop()
        #expect(e.waitUntilEnded(timeoutSeconds: 20))
        let p = try #require(pid.withLock { $0 })
        #expect(try await groupGone(p))
        #expect(e.takeEvents().isEmpty, "no death is reported for a stopped engine")
    }
}
