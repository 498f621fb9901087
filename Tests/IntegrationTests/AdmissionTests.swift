import CompassClient
import CompassProtocol
import Foundation
import Testing

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
        let broker = try BrokerProcess(in: dir)
        let capacity = 64
        let worker = try startWorker(broker.backend, in: dir, name: "w", arguments: [
            "--engine-arg", "capacity=\(capacity)", "--engine-arg", "step_us=4000", "--engine-arg", "seq_us=20",
            "--stats-interval-ms", "200"])
        try worker.waitForLog("registered with broker")
        let count = 3000
        let expected = try Self.writePrompts(dir.file("in.jsonl"), count: count)
        let started = Date()
        let submit = try Spawned("compass", ["submit", dir.file("in.jsonl"), "--broker", broker.frontend, "--batch-size", "1",
                                             "--window", "256", "--out", dir.file("out.jsonl"), "--quiet"], in: dir, name: "submit")
        #expect(try submit.waitForExit(timeout: 240).isSuccess, "\(submit.log())")
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
}
