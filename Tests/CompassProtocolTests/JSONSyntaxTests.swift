import CompassProtocol
import Foundation
import Testing

@Suite("JSON syntax check")
struct JSONSyntaxTests {
    func check(_ s: String) -> JSONSyntax.Outcome { JSONSyntax.check(Array(s.utf8)) }

    @Test(arguments: [
        (#"[]"#, 0), (#" [ {"a": 1} , {"b": [true, false, null]} ] "#, 2), (#"[1, -2.5e10, 0, "x\"y\\u00e9"]"#, 4),
        (#"[[[[]]]]"#, 1), ("[\"\u{00e9}\u{4e2d}\"]", 1),
    ])
    func countsTopLevelArrays(text: String, count: Int) {
        #expect(check(text) == .array(count: count))
    }

    @Test func objectsAndScalarsAreOther() {
        #expect(check(#"{"requests": []}"#) == .other)
        #expect(check("42") == .other)
    }

    @Test(arguments: ["", "[", "[1,]", "[01]", "[1 2]", #"{"a" 1}"#, #"["unterminated]"#, "[tru]", "[1] x",
                      "[\"bad \\q escape\"]", "[\"\u{01}\"]", "[-]", "[1.]", "[1e]", #"{"a":}"#, "[nul]"])
    func rejectsInvalid(text: String) {
        guard case .invalid = check(text) else { Issue.record("accepted invalid JSON: \(text)"); return }
    }

    /// Long strings are scanned 8 bytes at a time: a quote, backslash or control character must be
    /// found at every offset of a word, next to multi-byte UTF-8 and at the end of the input.
    @Test func specialBytesAtEveryOffsetOfLongStrings() {
        for length in 0..<24 {
            for at in 0..<length {
                var plain = Array(repeating: UInt8(ascii: "a"), count: length)
                plain[at] = 0xc3 // a lead byte: not special
                #expect(JSONSyntax.check(Array("[\"".utf8) + plain + Array("\"]".utf8)) == .array(count: 1))
                var quoted = Array(repeating: UInt8(ascii: "a"), count: length)
                quoted[at] = UInt8(ascii: "\"") // ends the string early: the rest is not JSON
                #expect(JSONSyntax.check(Array("[\"".utf8) + quoted + Array("\"]".utf8))
                        == .invalid(offset: at + 3, reason: "expected ',' or ']' in array"))
                var control = Array(repeating: UInt8(ascii: "a"), count: length)
                control[at] = 0x1f
                guard case .invalid(let offset, _) = JSONSyntax.check(Array("[\"".utf8) + control + Array("\"]".utf8)) else {
                    Issue.record("a control character at \(at) of \(length) was accepted"); continue
                }
                #expect(offset == at + 2)
                var escaped = Array(repeating: UInt8(ascii: "a"), count: length)
                escaped[at] = UInt8(ascii: "\\")
                guard case .invalid = JSONSyntax.check(Array("[\"".utf8) + escaped + Array("\"]".utf8)) else {
                    Issue.record("a backslash before 'a' at \(at) of \(length) was accepted"); continue
                }
            }
        }
        #expect(JSONSyntax.check(Array("[\"0123456789abcdef\\\"0123456789\"]".utf8)) == .array(count: 1))
        guard case .invalid = JSONSyntax.check(Array("[\"0123456789abcdef0123".utf8)) else { Issue.record("unterminated accepted"); return }
    }

    @Test func depthIsBounded() {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        guard case .invalid(_, let reason) = JSONSyntax.check(Array(deep.utf8), maxDepth: 64) else { Issue.record("too deep accepted"); return }
        #expect(reason.contains("nesting"))
    }

    @Test func agreesWithFoundationOnRandomMutations() throws {
        var rng = SystemRandomNumberGenerator()
        let base = Array(#"[{"custom_id":"a","prompt":"hi \"there\"","max_tokens":16,"stop":["\n"],"x":[1.5e3,null,true]}]"#.utf8)
        for _ in 0..<2000 {
            var bytes = base
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                bytes[i] = Array(#"[]{}",:0a\ "#.utf8).randomElement(using: &rng)!
            }
            let foundation = (try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])) != nil
            let ours: Bool = { if case .invalid = JSONSyntax.check(bytes) { return false }; return true }()
            #expect(ours == foundation, "disagree on \(String(decoding: bytes, as: UTF8.self))")
        }
    }

    @Test func objectMembersLocateEachValueWithoutDecodingIt() throws {
        let text = #"{"type": "result", "results": [{"a": "x]}"}, 2], "stats": {"n": 1}, "e": "q\\"}"#
        let bytes = Array(text.utf8)
        let members = try #require(bytes.withUnsafeBytes { JSONSyntax.objectMembers($0) })
        func slice(_ r: Range<Int>) -> String { String(decoding: bytes[r], as: UTF8.self) }
        #expect(members.map { slice($0.key) } == [#""type""#, #""results""#, #""stats""#, #""e""#])
        #expect(members.map { slice($0.value) } == [#""result""#, #"[{"a": "x]}"}, 2]"#, #"{"n": 1}"#, #""q\\""#])
        #expect(members.map(\.count) == [nil, 2, nil, nil])
        for bad in [#"[1]"#, #"{"a": }"#, #"{"a": 1} x"#, #""s""#, #"{"a": [1,]}"#] {
            #expect(Array(bad.utf8).withUnsafeBytes { JSONSyntax.objectMembers($0) } == nil, "\(bad)")
        }
    }
}
