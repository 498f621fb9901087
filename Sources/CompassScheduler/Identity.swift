import CompassProtocol

/// A producer session as the scheduler keys it.
public enum SessionKey: Hashable, Sendable, CustomStringConvertible {
    /// A session a connection named with HELLO.
    case named(String)
    /// The session of a connection that has not said HELLO: its own, until it says HELLO (its
    /// batches then move into the named session).
    case anonymous(PeerID)

    static let anonymousPrefix = WireProtocol.reservedSessionPrefix

    /// The session as text, as STATUS, logs and the journal show it: its name, or `anon:` and the
    /// connection's routing id.
    public var description: String {
        switch self {
        case .named(let name): name
        case .anonymous(let route): Self.anonymousPrefix + route.description
        }
    }

    /// The session a text names (a journal's record, a HELLO's session): the inverse of
    /// `description`. Text in the anonymous form names that connection's anonymous session, as it
    /// did when sessions were keyed by their text: a journal written before still replays.
    public init(_ text: String) {
        if text.hasPrefix(Self.anonymousPrefix) {
            self = .anonymous(PeerID(description: String(text.dropFirst(Self.anonymousPrefix.count))))
        } else {
            self = .named(text)
        }
    }

    public var isAnonymous: Bool { if case .anonymous = self { true } else { false } }
}

extension PeerID {
    /// The id whose `description` is `text`: the bytes of its hex form (`0x` and lower-case hex
    /// digits, as libzmq's random ids are shown), else the text's UTF-8 (printable ids).
    public init(description text: String) {
        if text.hasPrefix("0x"), let bytes = Self.hexBytes(text.utf8.dropFirst(2)), !bytes.isEmpty, PeerID(bytes).description == text {
            self.init(bytes)
        } else {
            self.init(text)
        }
    }

    static func hexBytes(_ digits: Substring.UTF8View) -> [UInt8]? {
        guard digits.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var bytes: [UInt8] = []
        var high: UInt8?
        for c in digits {
            guard let v = value(c) else { return nil }
            if let h = high { bytes.append(h << 4 | v); high = nil } else { high = v }
        }
        return bytes
    }
}

/// A half cut from a batch by poison isolation: the batch it was cut from, and which half.
struct SplitHalf: Hashable {
    let parent: String
    /// 0: the first half of the parent's requests, 1: the second.
    let index: Int

    /// The half's batch id, as workers see it (`WireProtocol.maxDispatchIDBytes`): the parent's id
    /// and `~0` or `~1`. Made here only and never parsed: a worker's answer names it, and the
    /// half is found by it.
    var batchID: String { "\(parent)\(WireProtocol.splitSeparator)\(index)" }
}
