import CompassClient
import CompassProtocol
import CompassWire
import Foundation
import Testing
import ZMQ


@Suite("Hostile input fuzzing", .serialized, .timeLimit(.minutes(3)))
struct FuzzTests {
    static let seed: UInt64 = ProcessInfo.processInfo.environment["COMPASS_FUZZ_SEED"].flatMap(UInt64.init) ?? 20_261_124

    /// Well-formed messages of every command, the raw material for mutations.
    static func templates(frontend: Bool) -> [[[UInt8]]] {
        let h = WireProtocol.header
        let payload = Array(#"[{"custom_id":"f","prompt":"fuzz me"}]"#.utf8)
        if frontend {
            return [[h, [1], Array("sess".utf8)],
                    [h, [2], Array("fz-1".utf8), Array("default".utf8), BatchMeta(requestCount: 1).bytes, payload],
                    [h, [3], Array("fz-1".utf8)], [h, [4], Array("fz-1".utf8)], [h, [5]], [h, [6]]]
        }
        let caps = Array(#"{"pool":"default","tp":1,"gpus":[],"model":"","engine":"fuzz","max_batch":1,"credit":3,"pid":1,"host":"h","version":"0"}"#.utf8)
        return [[h, [0x11], caps], [h, [0x12], [0, 0, 0, 9]], [h, [0x13], Array("b".utf8), [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 2]],
                [h, [0x14], Array("b".utf8), [0, 0, 0, 1], Array("{}".utf8), Array("[]".utf8)],
                [h, [0x15], Array("b".utf8), [0, 0, 0, 1], Array("oom".utf8), [1], Array("x".utf8), []],
                [h, [0x16], []], [h, [0x17], Array("bye".utf8)]]
    }

    static func randomBytes(_ n: Int, _ rng: inout SplitMix64) -> [UInt8] {
        (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// One hostile message: random frames, a random command, a mutated well-formed message, or one
    /// of the shapes issue #20 found: too many frames, oversized control messages, results for
    /// batches the sender was never given (stale or stolen), another session's HELLO, ACK and CANCEL.
    static func message(frontend: Bool, _ rng: inout SplitMix64) -> [[UInt8]] {
        let h = WireProtocol.header
        switch Int.random(in: 0..<14, using: &rng) {
        case 10:
            // Past the 16-frame bound: a well-formed message with 17 to 48 frames more.
            return templates(frontend: frontend).randomElement(using: &rng)!
                + (0..<Int.random(in: 17...48, using: &rng)).map { _ in randomBytes(Int.random(in: 0...64, using: &rng), &rng) }
        case 11:
            // Control messages past the 64 KiB bound: a huge session name, READY with a huge gpus
            // array, a HEARTBEAT with a huge frame.
            let blob = Array(repeating: UInt8(ascii: "9"), count: Int.random(in: 70_000...300_000, using: &rng))
            if frontend { return [h, [1], blob] }
            if Bool.random(using: &rng) {
                let gpus = "[" + String(repeating: "{\"index\":0},", count: blob.count / 12) + "{\"index\":0}]"
                return [h, [0x11], Array(#"{"pool":"default","credit":3,"gpus":\#(gpus)}"#.utf8)]
            }
            return [h, [0x12], blob]
        case 12:
            // Stale and foreign answers: a RESULT or FAILED for the batch id the producers use, at
            // any attempt, from a worker that was never sent it.
            let attempt: [UInt8] = [0, 0, 0, UInt8.random(in: 1...6, using: &rng)]
            return Bool.random(using: &rng)
                ? [h, [0x14], Array("fz-1".utf8), attempt, Array("{}".utf8), Array(#"[{"custom_id":"f","text":"stolen"}]"#.utf8)]
                : [h, [0x15], Array("fz-1".utf8), attempt, Array("engine_error".utf8), [1], Array("x".utf8), []]
        case 13:
            // Session takeover: HELLO as one of a few shared sessions, then ACK or CANCEL the shared id.
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: return [h, [1], Array("sess-\(Int.random(in: 0..<3, using: &rng))".utf8)]
            case 1: return [h, [3], Array("fz-1".utf8)]
            default: return [h, [4], Array("fz-1".utf8)]
            }
        case 0...2:
            return (0..<Int.random(in: 1...10, using: &rng)).map { _ in
                randomBytes(Bool.random(using: &rng) ? Int.random(in: 0...40, using: &rng) : Int.random(in: 0...4000, using: &rng), &rng)
            }
        case 3:
            return [WireProtocol.header, [UInt8.random(in: 0...255, using: &rng)]]
                + (0..<Int.random(in: 0...6, using: &rng)).map { _ in randomBytes(Int.random(in: 0...24, using: &rng), &rng) }
        case 4:
            // Oversized for the payload limit (but under ZMQ_MAXMSGSIZE): REJECTED too_large, not stored.
            let t = templates(frontend: frontend)
            var m = t[frontend ? 1 : 3]
            m[m.count - 1] = Array(repeating: UInt8(ascii: " "), count: Int.random(in: 300_000...600_000, using: &rng))
            return m
        default:
            var m = templates(frontend: frontend).randomElement(using: &rng)!
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let i = Int.random(in: 0..<m.count, using: &rng)
                switch Int.random(in: 0..<6, using: &rng) {
                case 0 where !m[i].isEmpty: m[i][Int.random(in: 0..<m[i].count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                case 1: m[i] = Array(m[i].prefix(Int.random(in: 0...max(0, m[i].count), using: &rng)))
                case 2 where m.count > 1: m.remove(at: i)
                case 3: m.insert(randomBytes(Int.random(in: 0...16, using: &rng), &rng), at: i)
                case 4: m.append(m[i])
                default: m.swapAt(i, Int.random(in: 0..<m.count, using: &rng))
                }
            }
            return m
        }
    }

    @Test("Thousands of random and mutated messages on both sockets; then a normal run is served correctly in bounded memory")
    func brokerSurvivesFuzzing() async throws {
        print("fuzz seed \(Self.seed) (replay with COMPASS_FUZZ_SEED=\(Self.seed))")
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-payload-bytes", "200000"])
        let before = try #require(residentKiB(broker.process.pid))
        let holder = try ZMQContextHolder()
        let peers = try (0..<16).map { try holder.dealer(broker.frontend, id: "fz-front-\($0)") }
            + (0..<16).map { try holder.dealer(broker.backend, id: "fz-back-\($0)") }
        var rng = SplitMix64(state: Self.seed)
        var sent = 0
        for round in 0..<4000 {
            let index = Int.random(in: 0..<peers.count, using: &rng)
            let frames = Self.message(frontend: index < 16, &rng)
            let copies = Int.random(in: 0..<50, using: &rng) == 0 ? 40 : 1 // now and then a flood
            for _ in 0..<copies {
                try peers[index].send(frames.map { Frame(bytes: $0) })
                sent += 1
            }
            if round % 500 == 0 { #expect(broker.process.child.poll() == nil, "broker died at round \(round), seed \(Self.seed)") }
        }
        // Still serving: a real worker and client complete a run correctly.
        let worker = try startWorker(broker.backend, in: dir, name: "worker")
        try await worker.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let (batch, expected) = requests(40, prefix: "after")
        for chunk in stride(from: 0, to: batch.count, by: 8) {
            let outcome = try await client.submit(Array(batch[chunk..<chunk + 8]), pool: "default")
            for r in try outcome.results() { #expect(r.text == expected[r.customID], "seed \(Self.seed)") }
        }
        #expect(broker.process.child.poll() == nil, "seed \(Self.seed)")
        let after = try #require(residentKiB(broker.process.pid))
        print("fuzz: \(sent) hostile messages; broker RSS \(before / 1024) MiB before, \(after / 1024) MiB after")
        #expect(after - before < 64 * 1024, "broker grew by \((after - before) / 1024) MiB (seed \(Self.seed))")
    }
}
