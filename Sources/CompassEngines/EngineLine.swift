import CompassProtocol
import Foundation

/// One line an engine wrote on fd 4, read only as far as the worker needs it: one pass checks the
/// whole line and finds its members (JSONSyntax.objectMembers); small values are decoded on demand,
/// and `results` never is: it passes on as the bytes the engine wrote.
struct EngineLine {
    let bytes: UnsafeRawBufferPointer
    let members: [JSONSyntax.Member]

    /// Nil when the line is not a JSON object.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard let members = JSONSyntax.objectMembers(bytes) else { return nil }
        self.bytes = bytes
        self.members = members
    }

    /// The member named `key` (the first, if the engine wrote it twice). Keys are compared as
    /// written, so a key spelled with escapes is not recognized; no engine writes one.
    func member(_ key: EngineProtocol.Key) -> JSONSyntax.Member? {
        var name = key.rawValue
        return name.withUTF8 { name in
            members.first { m in
                m.key.count == name.count + 2 && memcmp(bytes.baseAddress! + m.key.lowerBound + 1, name.baseAddress!, name.count) == 0
            }
        }
    }

    func raw(_ m: JSONSyntax.Member) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: bytes[m.value]) }

    func string(_ name: EngineProtocol.Key) -> String? {
        guard let m = member(name), bytes[m.value.lowerBound] == UInt8(ascii: "\"") else { return nil }
        let inner = UnsafeRawBufferPointer(rebasing: bytes[(m.value.lowerBound + 1)..<(m.value.upperBound - 1)])
        guard let base = inner.baseAddress else { return "" }
        if memchr(base, Int32(UInt8(ascii: "\\")), inner.count) == nil { return String(decoding: inner, as: UTF8.self) }
        return decode(m) as? String
    }

    func int(_ name: EngineProtocol.Key) -> Int? {
        guard let m = member(name) else { return nil }
        if let i = Int(String(decoding: raw(m), as: UTF8.self)) { return i }
        guard let d = double(name), d.rounded() == d, abs(d) < 1e15 else { return nil }
        return Int(d)
    }

    func double(_ name: EngineProtocol.Key) -> Double? {
        guard let m = member(name), let first = bytes[m.value.lowerBound...].first,
              first == UInt8(ascii: "-") || (first >= UInt8(ascii: "0") && first <= UInt8(ascii: "9")) else { return nil }
        return Double(String(decoding: raw(m), as: UTF8.self))
    }

    func bool(_ name: EngineProtocol.Key) -> Bool? {
        guard let m = member(name) else { return nil }
        switch bytes[m.value.lowerBound] {
        case UInt8(ascii: "t"): return true
        case UInt8(ascii: "f"): return false
        default: return nil
        }
    }

    /// A small object member (`stats`), decoded with Foundation.
    func object(_ name: EngineProtocol.Key) -> [String: Any]? {
        member(name).flatMap { decode($0) as? [String: Any] }
    }

    private func decode(_ m: JSONSyntax.Member) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(raw(m)), options: .fragmentsAllowed)
    }
}
