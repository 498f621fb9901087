/// A point on a monotonic clock, in nanoseconds. The scheduler never reads a clock itself: every
/// event carries `now`, which is how tests drive time.
public struct Timestamp: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func milliseconds(_ ms: UInt64) -> Timestamp { Timestamp(nanoseconds: ms * 1_000_000) }

    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.nanoseconds < b.nanoseconds }

    /// `self` moved forward by `ms` milliseconds.
    public func adding(milliseconds ms: UInt64) -> Timestamp { Timestamp(nanoseconds: nanoseconds &+ ms * 1_000_000) }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    public func milliseconds(since earlier: Timestamp) -> UInt64 {
        nanoseconds > earlier.nanoseconds ? (nanoseconds - earlier.nanoseconds) / 1_000_000 : 0
    }

    public var description: String { "\(nanoseconds / 1_000_000)ms" }
}

/// A ZeroMQ routing id: who sent a message to a ROUTER, and where to route a reply.
public struct PeerID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ string: String) { self.bytes = Array(string.utf8) }

    /// The bytes in one go (an array hashes element by element).
    public func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    /// Printable ids (compass peers name themselves) as text; libzmq's random ids as hex.
    public var description: String {
        if !bytes.isEmpty, bytes.allSatisfy({ $0 >= 0x21 && $0 < 0x7f }) {
            return String(decoding: bytes, as: UTF8.self)
        }
        return "0x" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

/// What the scheduler needs of a payload it holds. It takes the bytes on two rare paths only:
/// splitting a batch that keeps killing engines (poison isolation, through its `PayloadFormat`),
/// and comparing a re-SUBMIT that claims a batch of a connection that never said HELLO with the
/// batch it claims.
public protocol BatchPayload {
    var byteCount: Int { get }
    /// A copy of the bytes.
    var payloadBytes: [UInt8] { get }
    init(payloadBytes: [UInt8])
    /// Whether `other` holds the same bytes.
    func hasSameBytes(as other: Self) -> Bool
    /// A hash of the bytes, for telling payloads apart after they are gone (remembered ACKs): the
    /// process's seeded hasher, so a peer can neither predict it nor make two payloads collide on
    /// purpose. Equal only within one process.
    var contentHash: Int { get }
}

extension BatchPayload {
    public func hasSameBytes(as other: Self) -> Bool { byteCount == other.byteCount && payloadBytes == other.payloadBytes }
    public var contentHash: Int {
        var hasher = Hasher()
        payloadBytes.withUnsafeBytes { hasher.combine(bytes: $0) }
        hasher.combine(byteCount)
        return hasher.finalize()
    }
}

extension Array: BatchPayload where Element == UInt8 {
    public var byteCount: Int { count }
    public var payloadBytes: [UInt8] { self }
    public init(payloadBytes: [UInt8]) { self = payloadBytes }
    public func hasSameBytes(as other: [UInt8]) -> Bool { self == other }
}
