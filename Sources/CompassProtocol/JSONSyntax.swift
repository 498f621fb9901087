/// A single-pass, allocation-free JSON syntax check (RFC 8259 grammar, and UTF-8 as RFC 3629 has
/// it: no overlong forms, no encoded surrogates; a `\u` escape of a surrogate must be a high one
/// followed by a low one, so the document decodes to Unicode scalars everywhere). The broker runs it on every SUBMIT payload so a malformed batch is
/// REJECTED at once instead of failing later on a worker, and it learns the request count for free.
public enum JSONSyntax {
    public enum Outcome: Sendable, Equatable {
        /// A top-level array with `count` elements.
        case array(count: Int)
        /// Any other top-level value.
        case other
        /// Not JSON: where and why.
        case invalid(offset: Int, reason: String)
    }

    /// Checks `bytes`; nesting deeper than `maxDepth` is refused (bounds the scanner's stack).
    public static func check(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 64) -> Outcome {
        var scanner = Scanner(bytes: bytes, maxDepth: maxDepth)
        return scanner.run()
    }

    public static func check(_ bytes: [UInt8], maxDepth: Int = 64) -> Outcome {
        bytes.withUnsafeBytes { check($0, maxDepth: maxDepth) }
    }

    /// The byte ranges of a top-level array's elements, or nil when `bytes` is not a valid JSON array.
    public static func arrayElements(_ bytes: [UInt8], maxDepth: Int = 64) -> [Range<Int>]? {
        bytes.withUnsafeBytes { raw in
            var scanner = Scanner(bytes: raw, maxDepth: maxDepth)
            scanner.recordElements = true
            guard case .array = scanner.run() else { return nil }
            return scanner.elements
        }
    }

    /// A member of a top-level object: where its key (quotes included) and its value lie.
    public struct Member: Sendable, Equatable {
        public var key: Range<Int>
        public var value: Range<Int>
        /// The number of elements when the value is an array.
        public var count: Int?
    }

    /// The members of a top-level object, in the order written, or nil when `bytes` is not a valid
    /// JSON object. The whole text is checked, but no value is decoded: how the engine's `result`
    /// line is read without parsing its results (they pass on as the bytes the engine wrote).
    public static func objectMembers(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = 64) -> [Member]? {
        var scanner = Scanner(bytes: bytes, maxDepth: maxDepth)
        scanner.recordMembers = true
        guard case .other = scanner.run(), scanner.sawTopObject else { return nil }
        return scanner.members
    }

    private struct Failure: Error { let offset: Int; let reason: String }

    private struct Scanner {
        let bytes: UnsafeRawBufferPointer
        let maxDepth: Int
        var i = 0
        /// When set, the ranges of the top-level array's elements are collected in `elements`.
        var recordElements = false
        var elements: [Range<Int>] = []
        /// When set and the top-level value is an object, its members are collected in `members`.
        var recordMembers = false
        var members: [Member] = []
        var sawTopObject = false

        init(bytes: UnsafeRawBufferPointer, maxDepth: Int) {
            self.bytes = bytes
            self.maxDepth = maxDepth
        }

        mutating func run() -> Outcome {
            do {
                skipSpace()
                guard i < bytes.count else { throw Failure(offset: i, reason: "empty payload") }
                var count = -1
                if bytes[i] == UInt8(ascii: "[") {
                    count = try array(depth: 1)
                } else if recordMembers && bytes[i] == UInt8(ascii: "{") {
                    sawTopObject = true
                    try object(depth: 2, record: true)
                } else {
                    try value(depth: 1)
                }
                skipSpace()
                guard i == bytes.count else { throw Failure(offset: i, reason: "unexpected data after the JSON value") }
                return count >= 0 ? .array(count: count) : .other
            } catch let f as Failure {
                return .invalid(offset: f.offset, reason: f.reason)
            } catch {
                return .invalid(offset: i, reason: "\(error)")
            }
        }

        @inline(__always) mutating func skipSpace() {
            while i < bytes.count {
                let b = bytes[i]
                if b == 0x20 || b == 0x0a || b == 0x0d || b == 0x09 { i += 1 } else { return }
            }
        }

        mutating func value(depth: Int) throws {
            skipSpace()
            guard i < bytes.count else { throw Failure(offset: i, reason: "unexpected end of input") }
            switch bytes[i] {
            case UInt8(ascii: "{"): try object(depth: depth + 1)
            case UInt8(ascii: "["): _ = try array(depth: depth + 1)
            case UInt8(ascii: "\""): try string()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
            default: throw Failure(offset: i, reason: "unexpected character '\(Character(Unicode.Scalar(bytes[i])))'")
            }
        }

        mutating func array(depth: Int) throws -> Int {
            guard depth <= maxDepth else { throw Failure(offset: i, reason: "nesting deeper than \(maxDepth)") }
            i += 1 // [
            skipSpace()
            if i < bytes.count && bytes[i] == UInt8(ascii: "]") { i += 1; return 0 }
            var count = 0
            while true {
                skipSpace()
                let start = i
                try value(depth: depth)
                if recordElements && depth == 1 { elements.append(start..<i) }
                count += 1
                skipSpace()
                guard i < bytes.count else { throw Failure(offset: i, reason: "unterminated array") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return count }
                throw Failure(offset: i, reason: "expected ',' or ']' in array")
            }
        }

        mutating func object(depth: Int, record: Bool = false) throws {
            guard depth <= maxDepth else { throw Failure(offset: i, reason: "nesting deeper than \(maxDepth)") }
            i += 1 // {
            skipSpace()
            if i < bytes.count && bytes[i] == UInt8(ascii: "}") { i += 1; return }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw Failure(offset: i, reason: "expected a string key in object") }
                let keyStart = i
                try string()
                let key = keyStart..<i
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw Failure(offset: i, reason: "expected ':' after object key") }
                i += 1
                if record {
                    skipSpace()
                    let start = i
                    var count: Int?
                    if i < bytes.count && bytes[i] == UInt8(ascii: "[") { count = try array(depth: depth + 1) } else { try value(depth: depth) }
                    members.append(Member(key: key, value: start..<i, count: count))
                } else {
                    try value(depth: depth)
                }
                skipSpace()
                guard i < bytes.count else { throw Failure(offset: i, reason: "unterminated object") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return }
                throw Failure(offset: i, reason: "expected ',' or '}' in object")
            }
        }

        mutating func string() throws {
            let start = i
            i += 1 // opening quote
            while true {
                skipPlainStringBytes()
                guard i < bytes.count else { break }
                let b = bytes[i]
                if b == UInt8(ascii: "\"") { i += 1; return }
                if b < 0x20 { throw Failure(offset: i, reason: "control character in string") }
                if b >= 0x80 { try utf8Sequence(); continue }
                if b == UInt8(ascii: "\\") {
                    i += 1
                    guard i < bytes.count else { break }
                    switch bytes[i] {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                         UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        i += 1
                    case UInt8(ascii: "u"):
                        let unit = try escapedUnit()
                        if unit >= 0xDC00 && unit <= 0xDFFF {
                            throw Failure(offset: i - 6, reason: "lone low surrogate in \\u escape")
                        }
                        if unit >= 0xD800 && unit <= 0xDBFF {
                            // A high surrogate counts only as the first half of a pair.
                            guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                                throw Failure(offset: i - 6, reason: "lone high surrogate in \\u escape")
                            }
                            i += 1
                            let low = try escapedUnit()
                            guard low >= 0xDC00 && low <= 0xDFFF else { throw Failure(offset: i - 6, reason: "lone high surrogate in \\u escape") }
                        }
                    default:
                        throw Failure(offset: i, reason: "bad escape in string")
                    }
                    continue
                }
                i += 1
            }
            throw Failure(offset: start, reason: "unterminated string")
        }

        /// Reads the 4 hex digits after `\u` (`i` at the `u`), leaving `i` after them.
        mutating func escapedUnit() throws -> UInt32 {
            guard i + 4 < bytes.count else { throw Failure(offset: i, reason: "truncated \\u escape") }
            var unit: UInt32 = 0
            for k in 1...4 {
                let c = bytes[i + k]
                guard isHex(c) else { throw Failure(offset: i + k, reason: "bad \\u escape") }
                unit = unit << 4 | UInt32(c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10)
            }
            i += 5
            return unit
        }

        /// Checks one multi-byte UTF-8 sequence at `i` (its first byte is 0x80 or above) and skips it.
        mutating func utf8Sequence() throws {
            let first = bytes[i]
            let (length, minimum, initial): (Int, UInt32, UInt32) = switch first {
            case 0xC2...0xDF: (2, 0x80, UInt32(first & 0x1F))
            case 0xE0...0xEF: (3, 0x800, UInt32(first & 0x0F))
            case 0xF0...0xF4: (4, 0x10000, UInt32(first & 0x07))
            default: (0, 0, 0)
            }
            guard length > 0, i + length <= bytes.count else { throw Failure(offset: i, reason: "invalid UTF-8") }
            var scalar = initial
            for k in 1..<length {
                let c = bytes[i + k]
                guard c & 0xC0 == 0x80 else { throw Failure(offset: i, reason: "invalid UTF-8") }
                scalar = scalar << 6 | UInt32(c & 0x3F)
            }
            guard scalar >= minimum, scalar <= 0x10FFFF, !(0xD800...0xDFFF).contains(scalar) else {
                throw Failure(offset: i, reason: "invalid UTF-8")
            }
            i += length
        }

        /// Skips, 8 bytes at a time, string content that holds no quote, backslash or control
        /// character; stops at (or up to 7 bytes before) the next such byte or the last 7 bytes.
        @inline(__always) mutating func skipPlainStringBytes() {
            guard let base = bytes.baseAddress else { return }
            while i + 8 <= bytes.count {
                if Self.hasSpecialStringByte(base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) { return }
                i += 8
            }
        }

        /// Whether any byte of `w` is '"', '\\', below 0x20 or above 0x7f (not ASCII: checked as
        /// UTF-8 one sequence at a time) (bit tricks from "Bit Twiddling Hacks": exact as a yes/no
        /// answer, whatever the byte order).
        @inline(__always) static func hasSpecialStringByte(_ w: UInt64) -> Bool {
            let ones: UInt64 = 0x0101_0101_0101_0101, highBits: UInt64 = 0x8080_8080_8080_8080
            let quote = w ^ (ones &* 0x22), backslash = w ^ (ones &* 0x5c)
            let hasQuote = (quote &- ones) & ~quote
            let hasBackslash = (backslash &- ones) & ~backslash
            let hasControl = (w &- ones &* 0x20) & ~w
            return (hasQuote | hasBackslash | hasControl | w) & highBits != 0
        }

        mutating func number() throws {
            let start = i
            if bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard i < bytes.count, isDigit(bytes[i]) else { throw Failure(offset: start, reason: "bad number") }
            if bytes[i] == UInt8(ascii: "0") { i += 1 } else { while i < bytes.count && isDigit(bytes[i]) { i += 1 } }
            if i < bytes.count && bytes[i] == UInt8(ascii: ".") {
                i += 1
                guard i < bytes.count, isDigit(bytes[i]) else { throw Failure(offset: i, reason: "bad fraction") }
                while i < bytes.count && isDigit(bytes[i]) { i += 1 }
            }
            if i < bytes.count && (bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E")) {
                i += 1
                if i < bytes.count && (bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-")) { i += 1 }
                guard i < bytes.count, isDigit(bytes[i]) else { throw Failure(offset: i, reason: "bad exponent") }
                while i < bytes.count && isDigit(bytes[i]) { i += 1 }
            }
        }

        mutating func literal(_ word: StaticString) throws {
            let n = word.utf8CodeUnitCount
            guard i + n <= bytes.count else { throw Failure(offset: i, reason: "unexpected end of input") }
            let w = word.utf8Start
            for k in 0..<n where bytes[i + k] != w[k] { throw Failure(offset: i, reason: "bad literal") }
            i += n
        }

        @inline(__always) func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
        @inline(__always) func isHex(_ b: UInt8) -> Bool {
            isDigit(b) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66)
        }
    }
}
