import CompassClient
import CompassProtocol
import CompassScheduler
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Placement by affinity key with real processes: batches that share a long preamble run on the
/// worker their key ranks first while it can take them, move when it leaves, and every request is
/// answered exactly once. Which worker ran a batch is in its RESULT stats (`worker`: the synthetic
/// engine's `pool@pid`); the key's ranking of the workers is computed here from STATUS
/// (`host:pid` of each worker) with the broker's own `AffinityPlacement`.
@Suite("Placement by affinity key, real processes", .serialized, .timeLimit(.minutes(3)))
struct AffinityPlacementTests {
    /// A few-shot preamble of about 600 bytes, different for each `name`.
    static func preamble(_ name: String) -> String {
        (0..<12).map { "Example \($0) of \(name): question q\($0) \(name) answer a\($0) \(name)." }.joined(separator: " ")
    }

    /// `count` requests that start with `preamble`, and the synthetic engine's answer to each
    /// (the prompt's words reversed, cut at max_tokens).
    static func batch(_ tag: String, preamble: String, count: Int = 4) -> ([InferenceRequest], [String: String]) {
        var list: [InferenceRequest] = []
        var expected: [String: String] = [:]
        for i in 0..<count {
            let prompt = preamble + " Question \(tag)-\(i)?"
            list.append(InferenceRequest(customID: "\(tag)-\(i)", prompt: prompt, maxTokens: 3))
            expected["\(tag)-\(i)"] = prompt.split(separator: " ").reversed().prefix(3).joined(separator: " ")
        }
        return (list, expected)
    }

    @Test("Two preambles, two workers: each preamble's batches all run on its key's worker while both have credit, and move when it leaves; each request answered once")
    func preamblesStayOnTheirWorker() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let workers = try await startWorkers(2, broker.backend, in: dir, prefix: "aff")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        try await eventually("both workers to register") { try await status(client).workers.count == 2 }
        let caps = try await status(client).workers.compactMap(\.capabilities)
        let identity = Dictionary(uniqueKeysWithValues: caps.map { ("\($0.host):\($0.pid)", "default@\($0.pid)") })

        // The worker (as RESULT stats name it) a preamble's key ranks first.
        func homeWorker(of preamble: String) -> String {
            let key = AffinityKey.of(InferenceRequest(customID: "k", prompt: preamble + " Question?"))
            return identity[AffinityPlacement.ranking(key: key, identities: Array(identity.keys))[0]]!
        }
        // B: the first of a few preambles whose key prefers the other worker than A's, so that the
        // two preambles share the pool rather than one worker.
        let alpha = Self.preamble("alpha")
        let beta = try #require((0..<40).lazy.map { Self.preamble("beta\($0)") }.first { homeWorker(of: $0) != homeWorker(of: alpha) })
        let preambles = ["A": alpha, "B": beta]
        let home = preambles.mapValues(homeWorker(of:))

        var answered: [String: Int] = [:]
        var ranOn: [String: Set<String>] = [:]
        /// Submits one batch of preamble `name`; returns the worker that ran it and its results.
        @Sendable func run(_ tag: String, _ name: String) async throws -> (worker: String, results: [InferenceResult], expected: [String: String]) {
            let (requests, expected) = Self.batch(tag, preamble: preambles[name]!)
            let outcome = try await client.submit(requests, pool: "default", batchID: "aff-\(tag)", affinity: AffinityKey.of(requests))
            return (try #require(outcome.stats()?.worker), try outcome.results(), expected)
        }
        func record(_ ran: (worker: String, results: [InferenceResult], expected: [String: String])) -> String {
            for result in ran.results {
                answered[result.customID, default: 0] += 1
                #expect(result.text == ran.expected[result.customID], "\(result.customID)")
            }
            return ran.worker
        }
        // Rounds of one batch per preamble at once: neither worker is ever out of credit or over
        // its share, so every batch goes to its key's first choice.
        for round in 0..<8 {
            async let a = run("A\(round)", "A")
            async let b = run("B\(round)", "B")
            let (ranA, ranB) = try await (a, b)
            ranOn["A", default: []].insert(record(ranA))
            ranOn["B", default: []].insert(record(ranB))
        }
        #expect(ranOn["A"] == [home["A"]!], "\(ranOn)")
        #expect(ranOn["B"] == [home["B"]!], "\(ranOn)")
        let counters = try #require(try await status(client).scheduler.pools.first { $0.name == "default" }?.counters)
        #expect(counters.affinityPlaced == 16 && counters.affinityFallback == 0, "\(counters)")

        // A burst of both preambles at once (placement under load: a key's worker takes its share,
        // the rest spills): still every request answered exactly once.
        let burst = try await withThrowingTaskGroup(of: (worker: String, results: [InferenceResult], expected: [String: String]).self) { group in
            for i in 0..<20 { group.addTask { try await run("burst\(i)", i % 2 == 0 ? "A" : "B") } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        for ran in burst { _ = record(ran) }

        // A's worker drains and leaves: A's batches move to the other worker.
        let leaving = try #require(workers.first { "default@\($0.pid)" == home["A"]! })
        let other = try #require(identity.values.first { $0 != home["A"]! })
        leaving.child.signal(SIGTERM)
        #expect(try await leaving.waitForExit(timeout: 30).isSuccess)
        try await eventually("the broker to forget the drained worker") { try await status(client).scheduler.workers.count == 1 }
        var moved: Set<String> = []
        for round in 0..<4 { moved.insert(record(try await run("A-after\(round)", "A"))) }
        #expect(moved == [other])
        print("affinity placement: home \(home), ran on \(ranOn), after the drain \(moved)")
        let batches = 16 + 20 + 4
        #expect(answered.count == batches * 4)
        #expect(answered.values.allSatisfy { $0 == 1 })
    }
}
