import CLibZMQ

#if canImport(Glibc)
import Glibc
#endif

/// One frame of a multipart message, owning a `zmq_msg_t`.
///
/// Sending a frame sends a reference-counted copy (`zmq_msg_copy`), so a large payload received
/// from one peer can be kept (for retries) and forwarded to another without copying its bytes.
/// A frame is not `Sendable`: libzmq's copy mutates the source's flags without synchronisation.
public final class Frame {
    let msg: UnsafeMutablePointer<zmq_msg_t>

    /// An empty frame, ready to receive into.
    init() {
        msg = .allocate(capacity: 1)
        zmq_msg_init(msg)
    }

    /// A frame of `count` uninitialised bytes.
    init(count: Int) {
        msg = .allocate(capacity: 1)
        // zmq_msg_init_size fails only when malloc does, which Swift treats as fatal anyway.
        precondition(zmq_msg_init_size(msg, count) == 0, "zmq_msg_init_size failed: out of memory")
    }

    /// A frame holding a copy of `bytes`.
    public convenience init<C: Collection>(bytes: C) where C.Element == UInt8 {
        self.init(count: bytes.count)
        if bytes.count > 0 {
            UnsafeMutableRawBufferPointer(start: zmq_msg_data(msg), count: bytes.count).copyBytes(from: bytes)
        }
    }

    /// A frame holding a copy of the raw bytes.
    public convenience init(copying buffer: UnsafeRawBufferPointer) {
        self.init(count: buffer.count)
        if let base = buffer.baseAddress, buffer.count > 0 {
            memcpy(zmq_msg_data(msg), base, buffer.count)
        }
    }

    /// A frame holding the UTF-8 bytes of `string`.
    public convenience init(string: String) {
        self.init(bytes: string.utf8)
    }

    /// A frame that shares `other`'s content (no byte copy for large frames).
    public convenience init(sharing other: Frame) {
        self.init()
        _ = zmq_msg_copy(msg, other.msg)
    }

    deinit {
        zmq_msg_close(msg)
        msg.deallocate()
    }

    /// Releases the content (libzmq frees it once no copy shares it) and leaves the frame empty.
    func clear() {
        zmq_msg_close(msg)
        zmq_msg_init(msg)
    }

    /// The number of bytes in the frame.
    public var count: Int { zmq_msg_size(msg) }

    /// Whether the frame has no bytes.
    public var isEmpty: Bool { count == 0 }

    /// Calls `body` with the frame's bytes. The pointer is valid only inside `body`.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg)))
    }

    /// A copy of the frame's bytes.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// The frame's bytes decoded as UTF-8 (invalid sequences replaced).
    public var string: String { withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
}
