/// Per-batch settings carried in the meta frame of SUBMIT and BATCH, big-endian:
/// request count (u32), max attempts (u16, 0 = default), priority (i16, higher first),
/// deadline in ms from acceptance (u32, 0 = none), flags (u32, reserved, 0): 16 bytes; then,
/// optionally, the affinity key (u64, 0 = none): 24 bytes.
public struct BatchMeta: Sendable, Equatable {
    public var requestCount: UInt32
    public var maxAttempts: UInt16
    public var priority: Int16
    public var deadlineMilliseconds: UInt32
    public var flags: UInt32
    /// An opaque key the producer derives from what the batch's requests share (a long prompt
    /// prefix, a scoring context; `AffinityKey`): the broker places batches with the same key on
    /// the same worker where the pool allows, so its engine computes the shared part once. 0: none.
    public var affinity: UInt64

    /// The meta frame without an affinity key (what every producer sent before keys existed).
    public static let byteCount = 16
    /// The meta frame with an affinity key.
    public static let byteCountWithAffinity = 24

    public init(requestCount: UInt32 = 0, maxAttempts: UInt16 = 0, priority: Int16 = 0, deadlineMilliseconds: UInt32 = 0,
                flags: UInt32 = 0, affinity: UInt64 = 0) {
        self.requestCount = requestCount
        self.maxAttempts = maxAttempts
        self.priority = priority
        self.deadlineMilliseconds = deadlineMilliseconds
        self.flags = flags
        self.affinity = affinity
    }

    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Calls `body` with the big-endian layout, built on the stack: 16 bytes, or 24 with a key
    /// (a meta without one stays byte for byte what it always was).
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        // A tuple of these widths has no padding: offsets 0, 4, 6, 8, 12 and 16, 24 bytes in all.
        let layout = (requestCount.bigEndian, maxAttempts.bigEndian, priority.bigEndian, deadlineMilliseconds.bigEndian, flags.bigEndian,
                      affinity.bigEndian)
        let count = affinity == 0 ? BatchMeta.byteCount : BatchMeta.byteCountWithAffinity
        return Swift.withUnsafeBytes(of: layout) { body(UnsafeRawBufferPointer(rebasing: $0.prefix(count))) }
    }

    /// Decodes the layout; nil when shorter than 16 bytes. The key is read when the frame has its
    /// 8 bytes; longer input is accepted (later versions may append fields).
    public init?(bytes b: UnsafeRawBufferPointer) {
        guard b.count >= BatchMeta.byteCount else { return nil }
        func get<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            var v: T = 0
            for i in 0..<MemoryLayout<T>.size { v = v << 8 | T(truncatingIfNeeded: b[offset + i]) }
            return v
        }
        self.init(requestCount: get(0, UInt32.self), maxAttempts: get(4, UInt16.self), priority: get(6, Int16.self),
                  deadlineMilliseconds: get(8, UInt32.self), flags: get(12, UInt32.self),
                  affinity: b.count >= BatchMeta.byteCountWithAffinity ? get(16, UInt64.self) : 0)
    }
}
