import CompassClient
import CompassProtocol
import Foundation
import Testing
import ZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The chaos run: workers SIGKILLed, restarted, SIGSTOPped and SIGCONTed while a run goes on, and
/// hostile peers on both sockets sending the fuzzer's messages throughout (too many frames,
/// oversized control messages, stale and foreign results, other sessions' HELLO, ACK and CANCEL).
/// The suite runs a short one; `chaos/run` runs the long one (20,000 requests) with the same code.
@Suite("Chaos", .serialized, .timeLimit(.minutes(15)))
struct ChaosTests {
    let env = ProcessInfo.processInfo.environment
    var total: Int { env["COMPASS_CHAOS_REQUESTS"].flatMap(Int.init) ?? 3000 }
    var workerCount: Int { env["COMPASS_CHAOS_WORKERS"].flatMap(Int.init) ?? 6 }
    var seed: UInt64 { env["COMPASS_CHAOS_SEED"].flatMap(UInt64.init) ?? 7 }
    /// Hostile messages per chaos tick (COMPASS_CHAOS_HOSTILE; 0: workers' faults only).
    var hostilePerTick: Int { env["COMPASS_CHAOS_HOSTILE"].flatMap(Int.init) ?? 8 }

    @Test("Workers killed, hung and restarted during a run: zero lost, zero duplicated, every result correct")
    func chaosRun() async throws {
        print("chaos: \(total) requests, \(workerCount) workers, seed \(seed)")
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-attempts", "10"])
        var generation = 0
        func launch() throws -> Spawned {
            generation += 1
            return try startWorker(broker.backend, in: dir, name: "w\(generation)", arguments: ["--engine-arg", "batch_ms=100", "--credit", "2"])
        }
        var workers = try (0..<workerCount).map { _ in try launch() }
        for w in workers { try await w.waitForLog("registered with broker") }
        let expected = try writePrompts(dir.file("in.jsonl"), count: total)
        let started = Date()
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--batch-size", "16",
                                             "--out", dir.file("out.jsonl"), "--quiet", "--max-attempts", "10"], in: dir, name: "submit")
        var rng = SplitMix64(state: seed)
        var kills = 0, stops = 0
        // Hostile peers: 4 producers and 4 would-be workers. A READY that the broker would accept is
        // left out: an unauthenticated peer that registers and holds batches costs the run retries
        // (CURVE allowlists are the answer to that), which is not what this run measures.
        let holder = try ZMQContextHolder()
        let hostile = try (0..<4).map { try holder.dealer(broker.frontend, id: "chaos-front-\($0)") }
            + (0..<4).map { try holder.dealer(broker.backend, id: "chaos-back-\($0)") }
        var hostileSent = 0
        var hostileRng = SplitMix64(state: seed ^ 0x5EED_0F_C4A0) // its own: the faults' schedule stays the seed's
        var stopped: (index: Int, until: Date)?
        while submit.child.poll() == nil {
            try await Task.sleep(nanoseconds: UInt64.random(in: 100_000_000...250_000_000, using: &rng))
            for _ in 0..<hostilePerTick {
                let index = Int.random(in: 0..<hostile.count, using: &hostileRng)
                let frames = FuzzTests.message(frontend: index < 4, &hostileRng)
                let registers = index >= 4 && frames.count > 1 && frames[1] == [0x11] && frames.reduce(0) { $0 + $1.count } < 65_536
                if registers { continue }
                try hostile[index].send(frames.map { Frame(bytes: $0) })
                hostileSent += 1
            }
            if let s = stopped, Date() >= s.until {
                workers[s.index].child.signal(SIGCONT)
                stopped = nil
            }
            if Bool.random(using: &rng) || stopped != nil {
                let victim = Int.random(in: 0..<workers.count, using: &rng)
                guard stopped?.index != victim else { continue }
                kill(workers[victim].pid, SIGKILL)
                workers[victim] = try await launch() // restarted, as a launcher would
                kills += 1
            } else {
                let victim = Int.random(in: 0..<workers.count, using: &rng)
                workers[victim].child.signal(SIGSTOP)
                stopped = (victim, Date().addingTimeInterval(Double.random(in: 0.5...1.0, using: &rng)))
                stops += 1
            }
        }
        if let s = stopped { workers[s.index].child.signal(SIGCONT) }
        let seconds = Date().timeIntervalSince(started)
        #expect(try await submit.waitForExit().isSuccess, "\(submit.log())")
        let problems = try checkResults(dir.file("out.jsonl"), expected: expected)
        #expect(problems.isEmpty, "seed \(seed): \(problems.prefix(10))")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let counters = try #require(try await status(client).scheduler.pools.first?.counters)
        print("chaos: \(total) requests in \(String(format: "%.1f", seconds)) s; \(kills) SIGKILLs, \(stops) SIGSTOPs, \(hostileSent) hostile messages; " +
              "\(counters.completed) batches, \(counters.dispatched) dispatches, \(counters.retried) requeues, " +
              "\(counters.staleDropped) stale results dropped; lost 0, duplicated 0")
        #expect(kills > 0 && stops > 0, "the run ended before the chaos began; raise COMPASS_CHAOS_REQUESTS")
    }
}
