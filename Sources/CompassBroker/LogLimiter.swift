import CompassSystem
import Logging

/// Caps how many warnings about bad peer input are logged per second, so a flood of garbage
/// costs a counter, not a disk. Suppressed lines are counted and reported once the window ends.
struct LogLimiter {
    let perSecond: Int
    private var windowStart: UInt64 = 0
    private var inWindow = 0
    private var suppressed = 0

    init(perSecond: Int = 20) { self.perSecond = perSecond }

    mutating func warning(_ logger: Logger, _ message: @autoclosure () -> Logger.Message, metadata: Logger.Metadata? = nil) {
        let now = MonotonicClock.milliseconds()
        if now - windowStart >= 1000 {
            if suppressed > 0 { logger.warning("\(suppressed) similar warnings suppressed in the last second") }
            windowStart = now
            inWindow = 0
            suppressed = 0
        }
        inWindow += 1
        if inWindow <= perSecond { logger.warning(message(), metadata: metadata) } else { suppressed += 1 }
    }
}
