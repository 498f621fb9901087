import CompassScheduler
import Foundation
import ZMQ

extension Frame: BatchPayload {
    public var byteCount: Int { count }
    public var payloadBytes: [UInt8] { bytes }
    public convenience init(payloadBytes: [UInt8]) { self.init(bytes: payloadBytes) }

    /// Compares in place: no copy of either payload.
    public func hasSameBytes(as other: Frame) -> Bool {
        guard count == other.count else { return false }
        return withUnsafeBytes { a in
            other.withUnsafeBytes { b in a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 }
        }
    }

    /// Hashes in place, as the default does over a copy.
    public var contentHash: Int {
        var hasher = Hasher()
        withUnsafeBytes { hasher.combine(bytes: $0) }
        hasher.combine(count)
        return hasher.finalize()
    }
}
