import CLibZMQ

#if canImport(Glibc)
import Glibc
#endif

/// Where the frames of one multipart message are written, in order, the last one marked `last`.
///
/// Message encoders write to a sink instead of building a `[Frame]`, so the same code either
/// collects frames (`FrameList`, for tests and cold paths) or sends them straight to a socket
/// (`OutgoingMessage`: no `Frame` object and no array per field, small fields copied into
/// libzmq's inline message storage).
public protocol MessageSink {
    /// Appends a frame holding a copy of `bytes`.
    mutating func append(bytes: UnsafeRawBufferPointer, last: Bool)
    /// Appends a frame sharing `frame`'s content (no byte copy for large frames).
    mutating func append(frame: Frame, last: Bool)
}

extension MessageSink {
    @inlinable
    public mutating func append(bytes: [UInt8], last: Bool = false) {
        bytes.withUnsafeBytes { append(bytes: $0, last: last) }
    }

    /// A UTF-8 string frame.
    @inlinable
    public mutating func append(string: String, last: Bool = false) {
        var s = string
        s.withUTF8 { append(bytes: UnsafeRawBufferPointer($0), last: last) }
    }

    /// A 1-byte frame.
    @inlinable
    public mutating func append(u8 value: UInt8, last: Bool = false) {
        withUnsafeBytes(of: value) { append(bytes: $0, last: last) }
    }

    /// A 4-byte big-endian frame.
    @inlinable
    public mutating func append(u32 value: UInt32, last: Bool = false) {
        withUnsafeBytes(of: value.bigEndian) { append(bytes: $0, last: last) }
    }
}

/// A sink that collects the frames as `Frame` objects.
public struct FrameList: MessageSink {
    public private(set) var frames: [Frame] = []

    public init() {}

    public mutating func append(bytes: UnsafeRawBufferPointer, last: Bool) { frames.append(Frame(copying: bytes)) }
    public mutating func append(frame: Frame, last: Bool) { frames.append(frame) }
}

/// A sink that sends each frame as it is written (see `ZMQSocket.send(dontWait:_:)`).
///
/// After the first failure the rest of the message is not sent; `send` reports the failure.
/// libzmq queues a multipart message atomically, so only the first frame can be refused.
public struct OutgoingMessage: MessageSink {
    let handle: UnsafeMutableRawPointer
    let dontWait: Bool
    var frames = 0
    /// The first frame could not be queued without blocking.
    var refused = false
    var error: ZMQError?
    var finished = false

    init(handle: UnsafeMutableRawPointer, dontWait: Bool) {
        self.handle = handle
        self.dontWait = dontWait
    }

    public mutating func append(bytes: UnsafeRawBufferPointer, last: Bool) {
        guard canSend(last) else { return }
        var msg = zmq_msg_t()
        // zmq_msg_init_size fails only when malloc does, which Swift treats as fatal anyway.
        precondition(zmq_msg_init_size(&msg, bytes.count) == 0, "zmq_msg_init_size failed: out of memory")
        if let base = bytes.baseAddress, bytes.count > 0 { memcpy(zmq_msg_data(&msg), base, bytes.count) }
        send(&msg, last)
    }

    public mutating func append(frame: Frame, last: Bool) {
        guard canSend(last) else { return }
        var msg = zmq_msg_t()
        zmq_msg_init(&msg)
        _ = zmq_msg_copy(&msg, frame.msg)
        send(&msg, last)
    }

    private mutating func canSend(_ last: Bool) -> Bool {
        precondition(!finished, "a frame was written after the last one")
        finished = last
        return !refused && error == nil
    }

    private mutating func send(_ msg: inout zmq_msg_t, _ last: Bool) {
        var flags: Int32 = last ? 0 : ZMQ_SNDMORE
        if dontWait { flags |= ZMQ_DONTWAIT }
        while zmq_msg_send(&msg, handle, flags) == -1 {
            let code = zmq_errno()
            if code == EINTR { continue }
            zmq_msg_close(&msg)
            if code == EAGAIN && frames == 0 { refused = true } else { error = ZMQError(code: code, call: "zmq_msg_send") }
            return
        }
        frames += 1
    }
}

extension ZMQSocket {
    /// Sends one multipart message whose frames `write` appends, the last one with `last: true`.
    ///
    /// - Parameter dontWait: return `false` instead of blocking when the message cannot be queued
    ///   (high-water mark reached, or no peer for a DEALER).
    /// - Returns: `true` when libzmq queued the whole message.
    @discardableResult
    public func send(dontWait: Bool = false, _ write: (inout OutgoingMessage) -> Void) throws -> Bool {
        var message = OutgoingMessage(handle: handle, dontWait: dontWait)
        write(&message)
        if let error = message.error { throw error }
        if message.refused { return false }
        precondition(message.finished, "a message ends with a frame written with last: true")
        return true
    }
}
