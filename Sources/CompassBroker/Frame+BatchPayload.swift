import CompassScheduler
import ZMQ

extension Frame: BatchPayload {
    public var byteCount: Int { count }
}
