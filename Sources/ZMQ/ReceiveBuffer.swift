/// Where a socket's messages are read into (`ZMQSocket.receive(into:...)`), kept from one
/// message to the next: the frames of the latest message, and emptied frames of earlier messages
/// that nothing else kept, ready to be read into again.
///
/// A new frame costs two allocations (the object and its `zmq_msg_t`) and two frees when it
/// goes; a broker reads some 18 frames per batch and keeps only the payloads. Frames the caller
/// still holds (a payload kept for retries) are never reused: only a frame referenced from here
/// alone is emptied and taken back. At most `spareLimit` frames wait, each empty (no content).
public struct ReceiveBuffer {
    /// The latest message's frames (after an oversized message, its first frames).
    public internal(set) var frames: [Frame] = []
    /// Emptied frames, ready to be read into.
    var spare: [Frame] = []
    public let spareLimit: Int

    public init(spareLimit: Int = 32) {
        self.spareLimit = spareLimit
    }

    /// How many emptied frames wait to be reused.
    public var spareCount: Int { spare.count }

    /// Lets go of the latest message's frames (the array's storage is kept): those that nothing
    /// else holds are emptied and kept for reuse, up to `spareLimit`; the rest are released.
    /// `receive(into:...)` does this before reading; calling it once a message is handled
    /// releases its content (a large payload) without waiting for the next one.
    public mutating func recycle() {
        // Popped one by one: each frame moves out of the array (no retain), and a few `popLast`
        // cost less than `removeAll(keepingCapacity:)`, which goes through the generic
        // `replaceSubrange` (about 400 instructions a call, three calls per message).
        while var frame = frames.popLast() {
            guard spare.count < spareLimit, isKnownUniquelyReferenced(&frame) else { continue }
            frame.clear()
            spare.append(frame)
        }
    }

    /// An empty frame to read into: a spare one, or a new one.
    mutating func takeFrame() -> Frame {
        spare.popLast() ?? Frame()
    }

    /// Takes back a frame from `takeFrame` that was not used for a message.
    mutating func giveBack(_ frame: Frame) {
        var frame = frame
        guard spare.count < spareLimit, isKnownUniquelyReferenced(&frame) else { return }
        frame.clear()
        spare.append(frame)
    }
}
