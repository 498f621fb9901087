/// Per-batch settings carried in a 16-byte frame of SUBMIT and BATCH:
/// request count (u32), max attempts (u16, 0 = default), priority (i16, higher first),
/// deadline in ms from acceptance (u32, 0 = none), flags (u32, reserved, 0).
public struct BatchMeta: Sendable, Equatable {
    public var requestCount: UInt32
    public var maxAttempts: UInt16
    public var priority: Int16
    public var deadlineMilliseconds: UInt32
    public var flags: UInt32

    public static let byteCount = 16

    public init(requestCount: UInt32 = 0, maxAttempts: UInt16 = 0, priority: Int16 = 0, deadlineMilliseconds: UInt32 = 0, flags: UInt32 = 0) {
        self.requestCount = requestCount
        self.maxAttempts = maxAttempts
        self.priority = priority
        self.deadlineMilliseconds = deadlineMilliseconds
        self.flags = flags
    }

    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Calls `body` with the 16-byte big-endian layout, built on the stack.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        // A tuple of these widths has no padding: offsets 0, 4, 6, 8 and 12, 16 bytes in all.
        let layout = (requestCount.bigEndian, maxAttempts.bigEndian, priority.bigEndian, deadlineMilliseconds.bigEndian, flags.bigEndian)
        return Swift.withUnsafeBytes(of: layout) { body(UnsafeRawBufferPointer(rebasing: $0.prefix(BatchMeta.byteCount))) }
    }

    /// Decodes the 16-byte layout; nil when shorter. Longer input is accepted (later versions may append fields).
    public init?(bytes b: UnsafeRawBufferPointer) {
        guard b.count >= BatchMeta.byteCount else { return nil }
        func get<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            var v: T = 0
            for i in 0..<MemoryLayout<T>.size { v = v << 8 | T(truncatingIfNeeded: b[offset + i]) }
            return v
        }
        self.init(requestCount: get(0, UInt32.self), maxAttempts: get(4, UInt16.self), priority: get(6, Int16.self),
                  deadlineMilliseconds: get(8, UInt32.self), flags: get(12, UInt32.self))
    }
}
