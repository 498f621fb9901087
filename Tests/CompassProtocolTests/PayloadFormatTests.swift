import CompassProtocol
import Foundation
import Testing

/// The protocol's payload format as the broker's scheduler uses it for poison isolation: cut a
/// request array in halves, fail a half's requests one by one, join the halves' answers.
@Suite("JSON payload format")
struct PayloadFormatTests {
    let format = JSONPayloadFormat()

    func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test("Splitting and joining keep every element byte for byte")
    func splittingPreservesBytes() throws {
        let raw = Array(#"[ {"custom_id":"a","prompt":"x\ny","n":1.50} ,{"custom_id":"b","prompt":"[,]"},{"custom_id":"c"} ]"#.utf8)
        let (first, second) = try #require(format.halves(raw))
        #expect(String(decoding: first, as: UTF8.self) == #"[{"custom_id":"a","prompt":"x\ny","n":1.50}]"#)
        #expect(String(decoding: second, as: UTF8.self) == #"[{"custom_id":"b","prompt":"[,]"},{"custom_id":"c"}]"#)
        #expect(format.concatenate([first, second]) == Array(#"[{"custom_id":"a","prompt":"x\ny","n":1.50},{"custom_id":"b","prompt":"[,]"},{"custom_id":"c"}]"#.utf8))
        #expect(format.halves(Array(#"[{"custom_id":"a"}]"#.utf8)) == nil)
    }

    @Test func whatIsNotARequestArrayIsNotCut() {
        #expect(format.halves(Array("[]".utf8)) == nil)
        #expect(format.halves(Array(#"{"custom_id":"a"}"#.utf8)) == nil)
        #expect(format.halves(Array("[1,".utf8)) == nil)
        #expect(format.halves([1, 1, 1, 1]) == nil)
    }

    @Test func joiningSkipsWhatDoesNotParseAndKeepsEmptyHalves() {
        #expect(text(format.concatenate([Array("[1,2]".utf8), Array("[]".utf8), Array("not json".utf8), Array("[3]".utf8)])) == "[1,2,3]")
        #expect(text(format.concatenate([])) == "[]")
    }

    @Test("A failed half fails each of its requests by custom_id (by index without one), with the batch's code")
    func failedResultsNameEveryRequest() throws {
        let requests = Array(#"[{"custom_id":"a","prompt":"x"},{"prompt":"no id"},{"custom_id":"c","messages":[]}]"#.utf8)
        let results = try JSONDecoder().decode([InferenceResult].self, from: Data(format.failedResults(requests, code: AnyFailureCode(.engineDead), message: "killed")))
        #expect(results.map(\.customID) == ["a", "#1", "c"])
        #expect(results.allSatisfy { $0.error == RequestError(code: "engine_dead", message: "killed") && $0.text == nil })
        // A code this build does not know is written as it came.
        let other = format.failedResults(Array(#"[{"custom_id":"z"}]"#.utf8), code: AnyFailureCode(rawValue: "gpu_melted"), message: "m")
        #expect(try JSONDecoder().decode([InferenceResult].self, from: Data(other)).first?.error?.code == "gpu_melted")
        #expect(text(format.failedResults(Array("oops".utf8), code: AnyFailureCode(.oom), message: "m")) == "[]")
    }

    @Test("Stats of the halves are summed field by field, with the number of parts")
    func statsAreMerged() {
        let merged = format.mergeStats([Array(#"{"requests":3,"engine_ms":1.5,"worker":"w1"}"#.utf8),
                                        Array(#"{"requests":4,"engine_ms":2,"prompt_tokens":7}"#.utf8),
                                        Array("not json".utf8)], parts: 3)
        #expect(text(merged) == #"{"engine_ms":3.5,"prompt_tokens":7,"requests":7,"split_parts":3}"#)
        #expect(text(format.mergeStats([], parts: 2)) == #"{"split_parts":2}"#)
    }
}

@Suite("Failure codes as the broker carries them")
struct AnyFailureCodeTests {
    @Test func everyProtocolCodeIsKnownByItsText() {
        for code in FailureCode.allCases {
            let carried = AnyFailureCode(rawValue: code.rawValue)
            #expect(carried.known == code && carried == AnyFailureCode(code) && carried.description == code.rawValue)
        }
    }

    @Test func anUnknownCodeTravelsAsItCame() {
        let code = AnyFailureCode(rawValue: "gpu_melted")
        #expect(code.known == nil && code.rawValue == "gpu_melted" && "\(code)" == "gpu_melted")
        #expect(code != AnyFailureCode(.engineError))
    }
}
