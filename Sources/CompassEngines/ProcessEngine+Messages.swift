import CompassProtocol
import Foundation

/// What one line from the engine means to its generation.
enum EngineMessage {
    /// For the worker.
    case event(EngineEvent)
    /// The engine's word on why it is about to exit, kept for when it has.
    case fatal(code: FailureCode, message: String)
    /// Not a protocol message, or one of an unknown type (logged).
    case ignored
}

private typealias Key = EngineProtocol.Key

extension ProcessEngine {
    /// Reads one line of the engine protocol (docs/engines.md). A `result`'s `results` are sliced
    /// out of the line as they are (checked, never decoded) and its `stats` taken as sent.
    func message(_ line: UnsafeRawBufferPointer) -> EngineMessage {
        guard let m = EngineLine(line), let type = m.string(.type) else {
            logger.warning("engine sent a line that is not a protocol message", metadata: ["line": "\(String(decoding: line.prefix(200), as: UTF8.self))"])
            return .ignored
        }
        guard let kind = EngineProtocol.FromEngine(rawValue: type) else {
            logger.warning("engine sent an unknown message type", metadata: ["type": "\(type)"])
            return .ignored
        }
        let batchID = m.string(.batchID) ?? ""
        let attempt = UInt32(truncatingIfNeeded: m.int(.attempt) ?? 0)
        switch kind {
        case .ready:
            let detail = [m.string(.detail), m.string(.model), m.string(.startMethod).map { "start method \($0)" }]
                .compactMap { $0 }.joined(separator: ", ")
            let capacity = EngineCapacity(maxBatches: m.int(.maxBatches) ?? 1, sequences: m.int(.capacity), tokens: m.int(.capacityTokens))
            return .event(.ready(detail: detail, capacity: capacity))
        case .progress:
            return .event(.progress(batchID: batchID, attempt: attempt, done: UInt32(clamping: m.int(.done) ?? 0),
                                    total: UInt32(clamping: m.int(.total) ?? 0)))
        case .result:
            var payload = Array("[]".utf8)
            var stats: ResultStats
            if let results = m.member(.results), let count = results.count {
                payload = Array(m.raw(results))
                stats = resultStats(sent: m.object(.stats), results: m.raw(results), count: count)
            } else {
                stats = resultStats(sent: m.object(.stats), results: nil, count: 0)
            }
            return .event(.finished(batchID: batchID, attempt: attempt, payload: payload, stats: stats))
        case .failed:
            let code = FailureCode(rawValue: m.string(.code) ?? "") ?? .engineError
            return .event(.failed(batchID: batchID, attempt: attempt, code: code, retryable: m.bool(.retryable) ?? code.retryableByDefault,
                                  message: m.string(.message) ?? "engine reported failure"))
        case .fatal:
            return .fatal(code: FailureCode(rawValue: m.string(.code) ?? "") ?? .engineDead, message: m.string(.message) ?? "fatal engine error")
        }
    }

    /// A result's statistics: the counts as the engine sent them in `stats` when they are
    /// consistent (whole numbers, `requests` the number of results, no more failed than requests);
    /// else, for an engine that sends only `engine_ms` (example_engine.py) or wrong counts,
    /// counted from the results, which are decoded for that alone.
    func resultStats(sent: [String: Any]?, results: UnsafeRawBufferPointer?, count: Int) -> ResultStats {
        var stats = ResultStats(requests: count, failedRequests: 0, promptTokens: 0, completionTokens: 0,
                                engineMilliseconds: (sent?[Key.engineMilliseconds.rawValue] as? Double) ?? 0, worker: name,
                                engine: Self.stepStats(sent?[Key.engine.rawValue]))
        func sentCount(_ key: Key) -> Int? { (sent?[key.rawValue] as? Int).flatMap { $0 >= 0 ? $0 : nil } }
        if let requests = sentCount(.requests), let failed = sentCount(.failedRequests), let prompt = sentCount(.promptTokens),
           let completion = sentCount(.completionTokens), requests == count, failed <= requests {
            stats.failedRequests = failed
            stats.promptTokens = prompt
            stats.completionTokens = completion
            return stats
        }
        if let sent, [Key.requests, .failedRequests, .promptTokens, .completionTokens].contains(where: { sent[$0.rawValue] != nil }) {
            logger.warning("the engine's result stats do not match its results; counting them again",
                           metadata: ["engine": "\(name)", "stats": "\(sent)", "results": "\(count)"])
        }
        guard let results, let decoded = (try? JSONSerialization.jsonObject(with: Data(results))) as? [Any] else { return stats }
        let dicts = decoded.compactMap { $0 as? [String: Any] }
        stats.failedRequests = dicts.filter { !($0["error"] is NSNull) && $0["error"] != nil }.count
        stats.promptTokens = dicts.reduce(0) { $0 + ($1["prompt_tokens"] as? Int ?? 0) }
        stats.completionTokens = dicts.reduce(0) { $0 + ($1["completion_tokens"] as? Int ?? 0) }
        return stats
    }

    /// A continuously batching engine's `stats.engine` (capacity, steps, sequence_steps, occupancy), as sent.
    static func stepStats(_ value: Any?) -> EngineStepStats? {
        guard let object = value as? [String: Any], let capacity = object[Key.capacity.rawValue] as? Int,
              let steps = object[Key.steps.rawValue] as? Int, let sequenceSteps = object[Key.sequenceSteps.rawValue] as? Int else { return nil }
        return EngineStepStats(capacity: capacity, steps: steps, sequenceSteps: sequenceSteps, occupancy: object[Key.occupancy.rawValue] as? Double)
    }
}
