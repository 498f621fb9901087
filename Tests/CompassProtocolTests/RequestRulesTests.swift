import CompassProtocol
import Foundation
import Testing

/// The Swift validator against the shared table `spec/requests.json` (the Python validator reads
/// the same table in bin/engines/tests/test_request_rules.py).
@Suite("Request rules (spec/requests.json)")
struct RequestRulesTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var request: JSON
        var normalized: JSON?
        var error: String?
        var testDescription: String { name }
    }

    static let table: (valid: [Case], invalid: [Case]) = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../spec/requests.json")
        guard let data = try? Data(contentsOf: url), let json = try? JSON.parse([UInt8](data)) else { return ([], []) }
        func cases(_ key: String) -> [Case] {
            (json[key]?.array ?? []).map {
                Case(name: $0["name"]?.string ?? "?", request: $0["request"] ?? .null, normalized: $0["normalized"], error: $0["error"]?.string)
            }
        }
        return (cases("valid"), cases("invalid"))
    }()

    @Test func tableIsRead() {
        #expect(Self.table.valid.count >= 15)
        #expect(Self.table.invalid.count >= 30)
    }

    @Test(arguments: table.valid)
    func validRequestsPass(_ c: Case) throws {
        let request = try RequestRules.validate(c.request).get()
        // What the validator hands on, written back, is the normalized form (or the input itself).
        let written = try JSON.parse([UInt8](JSONEncoder().encode(request)))
        let expected = c.normalized ?? c.request
        #expect(Self.sorted(written) == Self.sorted(expected), "\(written.text) != \(expected.text)")
    }

    @Test(arguments: table.invalid)
    func invalidRequestsFailWithTheTablesMessage(_ c: Case) {
        guard case .failure(let problem) = RequestRules.validate(c.request) else {
            Issue.record("accepted \(c.request.text)")
            return
        }
        #expect(problem.message == c.error)
    }

    /// Objects with their keys sorted and numbers as doubles, so key order and 1 vs 1.0 do not matter.
    static func sorted(_ json: JSON) -> JSON {
        switch json {
        case .object(let pairs): .object(pairs.sorted { $0.0 < $1.0 }.map { ($0.0, sorted($0.1)) })
        case .array(let items): .array(items.map(sorted))
        case .int(let i): .double(Double(i))
        default: json
        }
    }

    @Test func decodingAPayloadGoesThroughTheRules() throws {
        let bad = Data(#"[{"custom_id":"a","prompt":"x","top_p":7}]"#.utf8)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([InferenceRequest].self, from: bad) }
        let good = try JSONDecoder().decode([InferenceRequest].self, from: Data(#"[{"custom_id":"a","prompt":"x","continuations":[" y",[3]]}]"#.utf8))
        #expect(good.first?.continuations == [.text(" y"), .tokens([3])])
    }

    @Test func resultsCarryLogprobsAndScoresOnlyWhenAsked() throws {
        let plain = InferenceResult(customID: "a", text: "t", promptTokens: 1, completionTokens: 1, finishReason: "stop")
        let text = String(decoding: try JSONEncoder().encode(plain), as: UTF8.self)
        #expect(!text.contains("scores") && !text.contains("logprobs"))
        var scored = plain
        scored.scores = [ContinuationScore(logprob: -1.5, tokens: 2, greedy: true)]
        scored.promptLogprobs = TokenLogprobs(tokenIDs: [1, 2], tokens: ["a", "b"], tokenLogprobs: [nil, -2], topLogprobs: [nil, []])
        let round = try JSONDecoder().decode(InferenceResult.self, from: JSONEncoder().encode(scored))
        #expect(round == scored)
        #expect(String(decoding: try JSONEncoder().encode(scored), as: UTF8.self).contains(#""token_logprobs":[null,-2]"#))
    }
}
