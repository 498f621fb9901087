import CompassScheduler
import ZMQ

extension Frame: BatchPayload {
    public var byteCount: Int { count }
    public var payloadBytes: [UInt8] { bytes }
    public convenience init(payloadBytes: [UInt8]) { self.init(bytes: payloadBytes) }
}
