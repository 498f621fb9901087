import CompassBroker
import CompassClient
import CompassProtocol
import CompassSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Faults with real processes", .serialized, .timeLimit(.minutes(3)))
struct FaultTests {
    @Test("SIGKILL one of 3 workers mid-run under compass up: every request answered once; the worker is restarted")
    func sigkillOneOfThreeWorkers() async throws {
        let dir = TempDir()
        let topology = dir.file("topology.yaml")
        try """
        broker:
          frontend: ipc://\(dir.path)/fe
          backend: ipc://\(dir.path)/be
          heartbeat_ms: 100
          liveness: 3
        pools:
          default:
            workers: 3
            credit: 1
            engine_args:
              batch_ms: 100
        """.write(toFile: topology, atomically: true, encoding: .utf8)
        let up = try Spawned("compass", ["up", topology], in: dir, name: "up")
        let client = try testClient("ipc://\(dir.path)/fe")
        defer { client.close() }
        try await eventually("3 workers registered") { (try? await status(client))?.scheduler.workers.count == 3 }
        let expected = try writePrompts(dir.file("in.jsonl"), count: 2000)
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", "ipc://\(dir.path)/fe", "--batch-size", "16",
                                             "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        // Pick a worker that is running a batch and kill it.
        let (pid, batch) = try await busyWorker(client, afterCompleted: 10)
        let killedAt = Date()
        kill(pid, SIGKILL)
        var redispatchSeconds = 0.0
        try await eventually("the killed worker's batch to be dispatched again") {
            let s = try await status(client)
            let elsewhere = s.scheduler.workers.contains { worker in
                worker.running.contains(batch) && s.workers.first(where: { $0.id == worker.id })?.capabilities?.pid != pid
            }
            if elsewhere || (s.scheduler.pools.first?.counters.retried ?? 0) > 0 {
                redispatchSeconds = Date().timeIntervalSince(killedAt)
                return true
            }
            return false
        }
        print("recovery: SIGKILLed worker's batch re-dispatched after \(String(format: "%.0f", redispatchSeconds * 1000)) ms (heartbeat 100 ms, liveness 3)")
        let exit = try await submit.waitForExit(timeout: 120)
        #expect(exit.isSuccess, "\(submit.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
        // The launcher restarted the killed worker: three workers again, none with the dead pid.
        try await eventually("the launcher to restart the worker") {
            let s = try await status(client)
            return s.workers.count == 3 && !s.workers.contains { $0.capabilities?.pid == pid }
        }
        #expect(up.log().contains("process exited; restarting"))
        up.child.signal(SIGINT)
        #expect(try await up.waitForExit(timeout: 30).isSuccess, "\(up.log())")
    }

    @Test("A SIGKILLed worker is found when its connection drops, not a heartbeat later (heartbeat 3 s)")
    func droppedConnectionIsNoticedAtOnce() async throws {
        let dir = TempDir()
        // Heartbeats every 3 s: without the backend's socket monitor the broker would notice the
        // dead worker only at its next heartbeat to it, 2.8 s or more after the kill.
        let broker = try await BrokerProcess(in: dir, arguments: ["--heartbeat-ms", "3000"])
        defer { broker.process.child.signal(SIGKILL) }
        let workers = try await startWorkers(2, broker.backend, in: dir, arguments: ["--credit", "1", "--engine-arg", "batch_ms=200"])
        defer { for w in workers { w.child.signal(SIGKILL) } }
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let expected = try writePrompts(dir.file("in.jsonl"), count: 64)
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--batch-size", "4",
                                             "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        let (pid, batch) = try await busyWorker(client)
        let killedAt = Date()
        kill(pid, SIGKILL)
        var noticed = 0.0
        try await eventually("the broker to give the killed worker's batch up") {
            let s = try await status(client)
            guard (s.scheduler.pools.first?.counters.retried ?? 0) > 0 else { return false }
            noticed = Date().timeIntervalSince(killedAt)
            return true
        }
        print("disconnect probe: batch \(batch) of the SIGKILLed worker requeued after \(String(format: "%.0f", noticed * 1000)) ms (heartbeat 3000 ms)")
        #expect(noticed < 1.5, "requeued after \(noticed) s")
        #expect(broker.process.log().contains("connection lost"), "\(broker.process.log())")
        #expect(try await submit.waitForExit(timeout: 60).isSuccess, "\(submit.log())")
        #expect(try checkResults(dir.file("out.jsonl"), expected: expected) == [])
    }

    @Test("A broker restarted without a journal makes connected workers re-register; a waiting producer still gets its result")
    func brokerRestartWithoutJournal() async throws {
        let dir = TempDir()
        let fe = "ipc://\(dir.path)/fe", be = "ipc://\(dir.path)/be"
        var broker: BrokerProcess? = try await BrokerProcess(in: dir, name: "broker1", frontend: fe, backend: be)
        let worker = try startWorker(be, in: dir, name: "worker", arguments: ["--engine-arg", "batch_ms=300"])
        try await worker.waitForLog("registered with broker")
        let client = try testClient(fe)
        defer { client.close() }
        let task = Task { try await client.submit([InferenceRequest(customID: "x", prompt: "survive a broker restart")], pool: "default", batchID: "restart-1") }
        try await eventually("the batch to run") { try await status(client).scheduler.workers.first?.running == ["restart-1"] }
        broker!.process.child.signal(SIGKILL)
        _ = try await broker!.process.waitForExit(timeout: 5)
        broker = try await BrokerProcess(in: dir, name: "broker2", frontend: fe, backend: be)
        try await eventually("the worker to re-register with the new broker", timeout: 15) {
            (try? await status(client))?.scheduler.workers.count == 1
        }
        let outcome = try await task.value
        #expect(try outcome.results().first?.text == "restart broker a survive")
        #expect(worker.log().contains("register again") || worker.log().contains("reconnecting"))
        _ = broker
    }
}

/// A worker running a batch (its pid and that batch), once the pool has completed more than
/// `afterCompleted` batches.
func busyWorker(_ client: CompassClient, afterCompleted: Int = -1) async throws -> (pid: Int32, batch: String) {
    var victim: (pid: Int32, batch: String)?
    try await eventually("a worker running a batch") {
        let s = try await status(client)
        guard (s.scheduler.pools.first?.counters.completed ?? 0) > afterCompleted else { return false }
        for w in s.scheduler.workers where !w.running.isEmpty {
            if let pid = s.workers.first(where: { $0.id == w.id })?.capabilities?.pid {
                victim = (pid, w.running[0])
                return true
            }
        }
        return false
    }
    return try #require(victim)
}
