#if canImport(Glibc)
import Glibc
#endif

/// Reads CLOCK_MONOTONIC. The I/O layers read time here and pass it into the pure scheduling code.
public enum MonotonicClock {
    /// Nanoseconds since an arbitrary fixed point; never goes backwards.
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Milliseconds since the same fixed point.
    public static func milliseconds() -> UInt64 { nanoseconds() / 1_000_000 }
}

/// Wall-clock seconds since the Unix epoch, for timestamps shown to people.
public func wallClockSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

extension UInt64 {
    /// Milliseconds (or any unit) from `earlier` to `self`, 0 when `earlier` is later. Timer code
    /// reads the clock once per pass while the pass itself may stamp newer times.
    @inlinable
    public func since(_ earlier: UInt64) -> UInt64 { self > earlier ? self - earlier : 0 }
}
