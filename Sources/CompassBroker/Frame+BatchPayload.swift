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

    /// Hashes in place, eight bytes at a time. It only tells a re-SUBMIT of an acknowledged id
    /// with other work (`payload_mismatch`) from one with the same (`duplicate`): both are refused,
    /// so it needs no seed against collisions, and it runs on every ACK (SipHash through `Hasher`
    /// took about as long as the rest of the ACK for a 1 KB payload).
    public var contentHash: Int {
        withUnsafeBytes { bytes in
            var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(bytes.count)
            var i = 0
            while i + 8 <= bytes.count {
                h = (h ^ bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xBF58_476D_1CE4_E5B9
                h ^= h >> 29
                i += 8
            }
            var tail: UInt64 = 0
            while i < bytes.count { tail = tail << 8 | UInt64(bytes[i]); i += 1 }
            h = (h ^ tail) &* 0x94D0_49BB_1331_11EB
            return Int(truncatingIfNeeded: h ^ (h >> 31))
        }
    }
}
