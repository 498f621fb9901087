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

    /// Long strings are scanned 8 bytes at a time: a quote, backslash, control character or invalid
    /// UTF-8 must be found at every offset of a word, next to multi-byte UTF-8 and at the end of the input.
    @Test func specialBytesAtEveryOffsetOfLongStrings() {
        for length in 0..<48 { // several 8-byte steps and the tail after them
            for at in 0..<length {
                var plain = Array(repeating: UInt8(ascii: "a"), count: length)
                plain.replaceSubrange(at...at, with: [0xc3, 0xa9]) // é: two bytes, valid UTF-8, not special
                #expect(JSONSyntax.check(Array("[\"".utf8) + plain + Array("\"]".utf8)) == .array(count: 1))
                plain[at + 1] = UInt8(ascii: "a") // a lead byte alone: invalid UTF-8, found at any offset
                #expect(JSONSyntax.check(Array("[\"".utf8) + plain + Array("\"]".utf8)) == .invalid(offset: at + 2, reason: "invalid UTF-8"))
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

    @Test func bytesNextToTheSpecialOnesPassAtEveryOffset() {
        // Neighbours of the bytes the 8-byte steps look for ('"' 0x22, '\\' 0x5c, controls
        // below 0x20, non-ASCII from 0x80): all plain string content.
        for byte: UInt8 in [0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f] {
            for length in 1..<48 {
                for at in 0..<length {
                    var plain = Array(repeating: UInt8(ascii: "a"), count: length)
                    plain[at] = byte
                    #expect(JSONSyntax.check(Array("[\"".utf8) + plain + Array("\"]".utf8)) == .array(count: 1))
                }
            }
        }
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

@Suite("JSON syntax check: UTF-8 and surrogates (a json document is UTF-8)")
struct JSONUnicodeTests {
    func check(_ bytes: [UInt8]) -> JSONSyntax.Outcome { JSONSyntax.check(bytes) }
    func string(_ inner: [UInt8]) -> [UInt8] { Array("[\"".utf8) + inner + Array("\"]".utf8) }

    @Test(arguments: [[0xff], [0xc0, 0xaf], [0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xc3], [0xe4, 0xb8],
                      [0x80], [0xf8, 0x88, 0x80, 0x80, 0x80]])
    func invalidUTF8IsRefusedAtAnyOffset(sequence: [UInt8]) {
        // Before, inside and after a run of ASCII the 8-byte fast path skips.
        for pad in [0, 3, 8, 13] {
            let text = string(Array(repeating: UInt8(ascii: "a"), count: pad) + sequence + Array("tail of the string".utf8))
            guard case .invalid(_, let reason) = check(text) else { Issue.record("accepted \(sequence) after \(pad) bytes"); continue }
            #expect(reason.contains("UTF-8"), "\(reason)")
        }
    }

    @Test func validUTF8Passes() {
        let text = "[\"é 中文 😀 \u{10FFFF} \u{7FF} \u{800} \u{FFFF}\", \"\(String(repeating: "ü", count: 40))\"]"
        #expect(check(Array(text.utf8)) == .array(count: 2))
    }

    @Test(arguments: [#"["\ud800"]"#, #"["\udc00"]"#, #"["\ud800\u0041"]"#, #"["\ud83dx"]"#, #"["x\uDBFF"]"#, #"["\ud800\ud800"]"#])
    func loneSurrogateEscapesAreRefused(text: String) {
        guard case .invalid(_, let reason) = check(Array(text.utf8)) else { Issue.record("accepted \(text)"); return }
        #expect(reason.contains("surrogate"), "\(reason)")
    }

    @Test func surrogatePairsPass() {
        #expect(check(Array(#"["\ud83d\ude00", "\uD800\uDC00", "\u00e9\uffff"]"#.utf8)) == .array(count: 3))
    }

    @Test func submitCheckAppliesCountAndDepth() {
        func submit(_ s: String, _ count: UInt32) -> Result<UInt32, ProtocolError> {
            Array(s.utf8).withUnsafeBytes { PayloadCheck.submit($0, declaredCount: count) }
        }
        #expect(submit("[1, 2]", 0) == .success(2))
        #expect(submit("[1, 2]", 2) == .success(2))
        guard case .failure(let wrong) = submit("[1, 2]", 3) else { Issue.record("a wrong count passed"); return }
        #expect(wrong.code == .badPayload && wrong.message.contains("request_count is 3"))
        let deep = String(repeating: "[", count: WireProtocol.maxJSONDepth + 1) + String(repeating: "]", count: WireProtocol.maxJSONDepth + 1)
        guard case .failure(let tooDeep) = submit(deep, 0) else { Issue.record("nesting past the limit passed"); return }
        #expect(tooDeep.message.contains("nesting deeper than \(WireProtocol.maxJSONDepth)"))
        let deepest = String(repeating: "[", count: WireProtocol.maxJSONDepth) + String(repeating: "]", count: WireProtocol.maxJSONDepth)
        #expect(submit(deepest, 0) == .success(1))
    }

    @Test func resultCheckComparesTheCount() {
        func problem(_ payload: String, stats: String = "{}", expecting n: UInt32) -> String? {
            Array(stats.utf8).withUnsafeBytes { s in Array(payload.utf8).withUnsafeBytes { PayloadCheck.result(stats: s, payload: $0) } }
                .problem(expecting: n)
        }
        #expect(problem("[{}, {}]", expecting: 2) == nil)
        #expect(problem("[{}, {}]", expecting: 0) == nil)
        #expect(problem("[{}]", expecting: 2)?.contains("1 results for a batch of 2 requests") == true)
        #expect(problem("{}", expecting: 1)?.contains("not a JSON array") == true)
        #expect(problem("nope", expecting: 1)?.contains("not valid UTF-8 JSON") == true)
        #expect(problem("[{}]", stats: "", expecting: 1)?.contains("stats") == true)
    }
}
