import CompassClient
import CompassProtocol
import CompassSystem
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Reliability with real processes", .serialized, .timeLimit(.minutes(3)))
struct ReliabilityTests {
    @Test("64 requests, one crashes the engine: 63 succeed, 1 fails with engine_dead, bounded dispatches")
    func poisonRequestIsIsolated() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let workers = try await startWorkers(2, broker.backend, in: dir)
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let (batch, expected) = requests(64) { $0 == 41 ? "@@crash" : "" }
        let outcome = try await client.submit(batch, pool: "default", batchID: "poison")
        let results = try outcome.results()
        #expect(results.map(\.customID) == batch.map(\.customID))
        for r in results where r.customID != "r41" { #expect(r.text == expected[r.customID] && r.error == nil) }
        #expect(results.first { $0.customID == "r41" }?.error?.code == "engine_dead")
        #expect(outcome.attempts <= 16, "dispatches: \(outcome.attempts)")
        print("poison isolation: 64 requests, 1 poison -> \(outcome.attempts) dispatches in total")
        #expect(broker.process.log().contains("split in halves"))
    }

    @Test("A hung engine is killed by the watchdog within its time and the batch completes on retry")
    func hangWatchdog() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: ["--progress-timeout-ms", "600"])
        try await worker.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let started = Date()
        let outcome = try await client.submit([InferenceRequest(customID: "h", prompt: "stall once @@hang1")], pool: "default")
        let seconds = Date().timeIntervalSince(started)
        #expect(try outcome.results().first?.text == "@@hang1 once stall")
        #expect(outcome.attempts == 2)
        #expect(worker.log().contains("engine made no progress; killing it"))
        // Detected after 600 ms without progress (checked every 50 ms), then restart (250 ms) and rerun.
        #expect(seconds < 3, "took \(seconds) s")
        print("hang watchdog: stalled batch answered after \(String(format: "%.2f", seconds)) s (watchdog 600 ms)")
    }

    @Test("A worker that heartbeats but never finishes loses its batch at the lease")
    func leaseTakesBackAStuckBatch() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--lease-ms", "500"])
        // The watchdog is off: only the broker's lease can take the batch back.
        let stuck = try startWorker(broker.backend, in: dir, name: "stuck", arguments: ["--progress-timeout-ms", "0"])
        try await stuck.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        // The first attempt hangs and nothing on the worker will notice; only the broker's lease
        // can take it back. It then cancels it there and dispatches attempt 2, which completes.
        let outcome = try await client.submit([InferenceRequest(customID: "l", prompt: "stuck once @@hang1")], pool: "default")
        #expect(try outcome.results().first?.text == "@@hang1 once stuck")
        #expect(outcome.attempts == 2)
        #expect(broker.process.log().contains("lease of 500 ms expired"))
    }

    @Test("Overload: a fast producer gets busy, backs off, and the broker's memory stays bounded")
    func overloadIsBounded() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-pool-bytes", "4000000"])
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: ["--engine-arg", "batch_ms=5"])
        try await worker.waitForLog("registered with broker")
        let busy = BusyCounter()
        var options = ClientOptions(broker: broker.frontend)
        options.heartbeatMilliseconds = 100
        options.onBusy = { _, _ in busy.increment() }
        let client = try CompassClient(options: options)
        defer { client.close() }
        let before = try #require(residentKiB(broker.process.pid))
        // 200 batches of ~100 KB: 20 MB offered at once to a pool bounded at 4 MB.
        let filler = String(repeating: "x", count: 100_000)
        let outcomes = try await withThrowingTaskGroup(of: BatchOutcome.self) { group in
            for i in 0..<200 {
                group.addTask {
                    try await client.submit([InferenceRequest(customID: "o\(i)", prompt: "load \(i) \(filler)", maxTokens: 2)],
                                            pool: "default", batchID: "over-\(i)")
                }
            }
            var all: [BatchOutcome] = []
            for try await o in group { all.append(o) }
            return all
        }
        #expect(outcomes.count == 200)
        #expect(try outcomes.allSatisfy { try $0.results().first?.error == nil })
        #expect(busy.value > 0, "the producer never saw busy")
        let s = try await status(client)
        #expect((s.scheduler.pools.first?.counters.rejectedBusy ?? 0) > 0)
        let after = try #require(residentKiB(broker.process.pid))
        print("overload: \(busy.value) busy refusals; broker RSS \(before / 1024) MiB before, \(after / 1024) MiB after 20 MB offered to a 4 MB pool")
        // The bound: the broker's base size plus a few times the pool limit (payloads, results and
        // libzmq's buffers each hold a share of it).
        #expect(after - before < 40 * 1024, "broker grew by \((after - before) / 1024) MiB")
    }

    @Test("A producer that never reads its results cannot make the broker grow without bound")
    func producerThatNeverReads() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-pool-bytes", "2000000"])
        let worker = try startWorker(broker.backend, in: dir, name: "w")
        try await worker.waitForLog("registered with broker")
        let before = try #require(residentKiB(broker.process.pid))
        let context = try ZMQContextHolder()
        let deaf = try context.dealer(broker.frontend)
        let filler = String(repeating: "y", count: 50_000)
        for i in 0..<400 { // 20 MB of batches; the producer never receives a single reply
            let payload = "[{\"custom_id\":\"d\(i)\",\"prompt\":\"\(filler)\",\"max_tokens\":1}]"
            try deaf.submit("deaf-\(i)", payload)
        }
        let client = try testClient(broker.frontend)
        defer { client.close() }
        try await eventually("the pool to fill up with unread results") {
            let s = try await status(client)
            return (s.scheduler.pools.first?.counters.rejectedBusy ?? 0) > 0 && s.scheduler.pools.first?.queuedBatches == 0
                && s.scheduler.pools.first?.runningBatches == 0
        }
        let after = try #require(residentKiB(broker.process.pid))
        print("deaf producer: broker RSS \(before / 1024) MiB before, \(after / 1024) MiB after 20 MB of unread results offered")
        #expect(after - before < 40 * 1024, "broker grew by \((after - before) / 1024) MiB")
        // The pool admits a batch only while it holds less than its limit; the results of batches
        // already admitted still come in. Here each 50 KB prompt is one 50 KB word, so its result is
        // as big: what is held stays under the limit plus those results, twice the limit.
        let held = try await status(client).scheduler.pools.first?.heldBytes ?? 0
        #expect(held <= 2 * 2_000_000 + 100_000, "held \(held) bytes")
        // And it has stopped growing: more submits are refused, not stored.
        let refusedBefore = try await status(client).scheduler.pools.first?.counters.rejectedBusy ?? 0
        for i in 400..<450 { try deaf.submit("deaf-\(i)", "[{\"custom_id\":\"e\(i)\",\"prompt\":\"x\"}]") }
        try await eventually("the extra submits to be refused") {
            (try await status(client).scheduler.pools.first?.counters.rejectedBusy ?? 0) >= refusedBefore + 50
        }
        #expect(try await status(client).scheduler.pools.first?.heldBytes == held)
    }

    @Test("Cancel of a running batch answers FAILED cancelled at once; a deadline fails a batch as timeout")
    func cancelAndDeadline() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: ["--engine-arg", "batch_ms=3000"])
        try await worker.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let slow = Task { try await client.submit([InferenceRequest(customID: "c", prompt: "slow")], pool: "default", batchID: "cancel-me") }
        try await eventually("the batch to run") { try await status(client).scheduler.workers.first?.running == ["cancel-me"] }
        let t0 = Date()
        client.cancel(batchID: "cancel-me")
        guard case .failed(let code, _, _) = try await slow.value.status else { Issue.record("not failed"); return }
        #expect(code == "cancelled")
        #expect(Date().timeIntervalSince(t0) < 1)
        try await eventually("the worker to be free again") { try await status(client).scheduler.workers.first?.credit == 2 }
        let late = try await client.submit([InferenceRequest(customID: "d", prompt: "too slow")], pool: "default",
                                           batchID: "deadline", deadlineMilliseconds: 300)
        guard case .failed(let code2, let message, _) = late.status else { Issue.record("not failed"); return }
        #expect(code2 == "timeout")
        #expect(message.contains("deadline"))
    }
}

/// Counts busy refusals seen by a client's callback.
final class BusyCounter: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}
