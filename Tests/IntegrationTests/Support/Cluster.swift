import CompassBroker
import CompassClient
import CompassProtocol
import Foundation

/// A broker process with its resolved endpoints.
final class BrokerProcess: @unchecked Sendable {
    // @unchecked: immutable after init.
    let process: Spawned
    let frontend: String
    let backend: String

    /// Starts compass-broker on wildcard TCP ports (or the given endpoints) and reads back the real ones.
    init(in dir: TempDir, name: String = "broker", frontend: String = "tcp://127.0.0.1:*", backend: String = "tcp://127.0.0.1:*",
         arguments: [String] = []) async throws {
        process = try Spawned("compass-broker", ["--frontend", frontend, "--backend", backend, "--heartbeat-ms", "100",
                                                 "--liveness", "3", "--pool", "default"] + arguments, in: dir, name: name)
        let line = try await process.waitForLog("compass-broker listening")
        func field(_ key: String) throws -> String {
            guard let part = line.split(separator: " ").first(where: { $0.hasPrefix(key + "=") }) else {
                throw HarnessError("no \(key) in: \(line)")
            }
            return String(part.dropFirst(key.count + 1))
        }
        self.frontend = try field("frontend")
        self.backend = try field("backend")
    }
}

/// Starts a compass-worker for `pool` against `backend`.
func startWorker(_ backend: String, in dir: TempDir, name: String, pool: String = "default", arguments: [String] = []) throws -> Spawned {
    try Spawned("compass-worker", ["--broker", backend, "--pool", pool] + arguments, in: dir, name: name)
}

/// Starts `count` workers named `prefix`0, `prefix`1... and waits until each has registered.
func startWorkers(_ count: Int, _ backend: String, in dir: TempDir, prefix: String = "w", arguments: [String] = []) async throws -> [Spawned] {
    let workers = try (0..<count).map { try startWorker(backend, in: dir, name: "\(prefix)\($0)", arguments: arguments) }
    for w in workers { try await w.waitForLog("registered with broker") }
    return workers
}

/// A client for tests, with fast heartbeats.
func testClient(_ frontend: String, session: String? = nil) throws -> CompassClient {
    var options = session.map { ClientOptions(broker: frontend, session: $0) } ?? ClientOptions(broker: frontend)
    options.heartbeatMilliseconds = 100
    options.liveness = 5
    return try CompassClient(options: options)
}

/// The broker's STATUS document.
func status(_ client: CompassClient) async throws -> BrokerStatus {
    try JSONDecoder().decode(BrokerStatus.self, from: Data(try await client.status()))
}

/// Writes `count` requests as JSONL and returns the expected completion of each custom_id,
/// computed here from the synthetic engine's definition (prompt words reversed, cut at max_tokens).
func writePrompts(_ path: String, count: Int, maxTokens: Int = 8, marker: (Int) -> String = { _ in "" }) throws -> [String: String] {
    var expected: [String: String] = [:]
    var lines: [String] = []
    for i in 0..<count {
        let words = ["prompt", "\(i)", "asks", "about", "item", "\(i * 7 % 13)", "of", "the", "batch"] + (marker(i).isEmpty ? [] : [marker(i)])
        let id = "req-\(i)"
        let request = InferenceRequest(customID: id, prompt: words.joined(separator: " "), maxTokens: maxTokens)
        lines.append(String(decoding: try JSONEncoder().encode(request), as: UTF8.self))
        expected[id] = words.reversed().prefix(maxTokens).joined(separator: " ")
    }
    try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    return expected
}

/// Reads a results file and checks it holds exactly one line per expected custom_id, each with the
/// expected text. Returns the problems found (empty when correct).
func checkResults(_ path: String, expected: [String: String]) throws -> [String] {
    let text = try String(contentsOfFile: path, encoding: .utf8)
    var seen: [String: Int] = [:]
    var problems: [String] = []
    for line in text.split(separator: "\n") {
        let result = try JSONDecoder().decode(InferenceResult.self, from: Data(line.utf8))
        seen[result.customID, default: 0] += 1
        if let error = result.error {
            problems.append("\(result.customID) failed: \(error.code) \(error.message)")
        } else if result.text != expected[result.customID] {
            problems.append("\(result.customID): got '\(result.text ?? "nil")', expected '\(expected[result.customID] ?? "no such request")'")
        }
    }
    for (id, n) in seen where n != 1 { problems.append("\(id) answered \(n) times") }
    for id in expected.keys where seen[id] == nil { problems.append("\(id) missing") }
    return problems
}

/// Resident memory of a process in KiB (VmRSS), or nil if it is gone.
func residentKiB(_ pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
    return Int(line.split(separator: " ").dropFirst().first ?? "")
}

/// Requests whose prompts are `words` plus an index, and the synthetic engine's expected answer for each.
func requests(_ count: Int, prefix: String = "r", marker: (Int) -> String = { _ in "" }) -> ([InferenceRequest], [String: String]) {
    var list: [InferenceRequest] = []
    var expected: [String: String] = [:]
    for i in 0..<count {
        let words = ["item", "\(i)", "of", prefix] + (marker(i).isEmpty ? [] : [marker(i)])
        list.append(InferenceRequest(customID: "\(prefix)\(i)", prompt: words.joined(separator: " ")))
        expected["\(prefix)\(i)"] = words.reversed().joined(separator: " ")
    }
    return (list, expected)
}
