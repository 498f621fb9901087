import CLibZMQ

#if canImport(Glibc)
import Glibc
#endif

/// A libzmq socket. It belongs to the thread that created it and is closed when released.
///
/// Every send and receive is multipart: a message is an array of `Frame`s.
public final class ZMQSocket {
    let handle: UnsafeMutableRawPointer
    /// Keeps the context alive until this socket is closed.
    private let context: ZMQContext
    public let type: SocketType

    init(context: ZMQContext, type: SocketType) throws {
        guard let handle = zmq_socket(context.handle, type.raw) else {
            throw ZMQError.last("zmq_socket")
        }
        self.handle = handle
        self.context = context
        self.type = type
        // A finite linger by default, so closing a socket with unsendable messages never blocks
        // context termination forever. Owners that must flush (a draining worker) raise it.
        do {
            try set(.linger(milliseconds: 0))
        } catch {
            zmq_close(handle)
            throw error
        }
    }

    deinit {
        zmq_close(handle)
    }

    // MARK: Endpoints

    /// Binds to `endpoint`, e.g. `tcp://127.0.0.1:*` or `ipc:///tmp/compass.sock`.
    public func bind(_ endpoint: String) throws {
        _ = try retryingEINTR("zmq_bind", endpoint) { zmq_bind(handle, endpoint) }
    }

    /// Connects to `endpoint`. libzmq connects in the background and reconnects by itself.
    public func connect(_ endpoint: String) throws {
        _ = try retryingEINTR("zmq_connect", endpoint) { zmq_connect(handle, endpoint) }
    }

    /// Disconnects from an endpoint given to `connect`.
    public func disconnect(_ endpoint: String) throws {
        _ = try retryingEINTR("zmq_disconnect", endpoint) { zmq_disconnect(handle, endpoint) }
    }

    /// The endpoint the socket last bound to, with a wildcard port resolved (`tcp://127.0.0.1:40123`).
    public var lastEndpoint: String {
        get throws { try stringOption(ZMQ_LAST_ENDPOINT, "ZMQ_LAST_ENDPOINT") }
    }

    // MARK: Sending and receiving

    /// Sends `frames` as one multipart message. Each frame is sent as a shared copy and stays valid.
    ///
    /// - Parameter dontWait: return `false` instead of blocking when the message cannot be queued
    ///   (high-water mark reached, or no peer for a DEALER).
    /// - Returns: `true` when libzmq queued the whole message.
    @discardableResult
    public func send(_ frames: [Frame], dontWait: Bool = false) throws -> Bool {
        precondition(!frames.isEmpty, "a message has at least one frame")
        let last = frames.count - 1
        return try send(dontWait: dontWait) { message in
            for (index, frame) in frames.enumerated() { message.append(frame: frame, last: index == last) }
        }
    }

    /// Receives one multipart message.
    ///
    /// - Parameter dontWait: return `nil` instead of blocking when nothing is waiting.
    /// - Throws: `ZMQError` with `isWouldBlock` when a receive timeout expires.
    public func receive(dontWait: Bool = false) throws -> [Frame]? {
        switch try receive(dontWait: dontWait, maxFrames: .max, maxBytes: { _ in .max }) {
        case .message(let frames): return frames
        case .oversized, nil: return nil // (no bound to pass)
        }
    }

    /// What `receive(dontWait:maxFrames:maxBytes:)` read.
    public enum BoundedMessage {
        /// A whole message within the bounds.
        case message([Frame])
        /// A message past a bound: `head` holds its first frames (at most three: for a ROUTER, the
        /// routing id, header and command, so the sender can be told), the rest was read and
        /// released one frame at a time. `frames` and `bytes` count the whole message.
        case oversized(head: [Frame], frames: Int, bytes: Int)
    }

    /// Receives one multipart message, holding at most `maxFrames` frames and `maxBytes(framesSoFar)`
    /// bytes in all (asked again after each frame, so the bound can depend on the command frame).
    ///
    /// libzmq's `ZMQ_MAXMSGSIZE` bounds each frame, not a message: a peer may send any number of
    /// frames. libzmq hands a multipart message over only once its last frame has arrived, so this
    /// cannot stop the transport from buffering it; what it bounds is what the caller holds and
    /// decodes: past a bound every further frame is released as soon as it is read.
    ///
    /// - Parameter dontWait: return `nil` instead of blocking when nothing is waiting.
    public func receive(dontWait: Bool = false, maxFrames: Int, maxBytes: ([Frame]) -> Int) throws -> BoundedMessage? {
        var buffer = ReceiveBuffer(spareLimit: 0)
        switch try receive(into: &buffer, dontWait: dontWait, maxFrames: maxFrames, maxBytes: maxBytes) {
        case nil: return nil
        case .message?: return .message(buffer.frames)
        case .oversized(let frames, let bytes)?: return .oversized(head: buffer.frames, frames: frames, bytes: bytes)
        }
    }

    /// What `receive(into:dontWait:maxFrames:maxBytes:)` read into its buffer.
    public enum BufferedMessage: Equatable {
        /// A whole message within the bounds: the buffer's `frames`.
        case message
        /// A message past a bound: the buffer's `frames` hold its first frames (at most three), the
        /// rest was read and released one frame at a time. `frames` and `bytes` count the whole message.
        case oversized(frames: Int, bytes: Int)
    }

    /// `receive(dontWait:maxFrames:maxBytes:)` into `buffer`: the message's frames replace what
    /// `buffer.frames` held, and are read into frames of earlier messages that nothing else kept
    /// (see `ReceiveBuffer`) rather than into new ones.
    public func receive(into buffer: inout ReceiveBuffer, dontWait: Bool = false, maxFrames: Int,
                        maxBytes: ([Frame]) -> Int) throws -> BufferedMessage? {
        buffer.recycle()
        // Read into a local array (moved out of the buffer and back: no copy), so `maxBytes` can be
        // handed the frames so far while `buffer` is being changed.
        var frames: [Frame] = []
        swap(&frames, &buffer.frames)
        defer { swap(&frames, &buffer.frames) }
        var bytes = 0
        let flags: Int32 = dontWait ? ZMQ_DONTWAIT : 0
        while true {
            let frame = buffer.takeFrame()
            while zmq_msg_recv(frame.msg, handle, frames.isEmpty ? flags : 0) == -1 {
                let code = zmq_errno()
                if code == EINTR { continue }
                buffer.giveBack(frame)
                if code == EAGAIN && frames.isEmpty && dontWait { return nil }
                throw ZMQError(code: code, call: "zmq_msg_recv")
            }
            bytes += frame.count
            var more = zmq_msg_more(frame.msg) != 0
            frames.append(frame)
            guard frames.count > maxFrames || bytes > maxBytes(frames) else {
                if !more { return .message }
                continue
            }
            // Past a bound: keep the head, release the rest frame by frame (zmq_msg_recv releases
            // what the scratch frame held before it reads the next one into it).
            var count = frames.count
            frames.removeSubrange(min(3, count - 1)...)
            let scratch = buffer.takeFrame()
            defer { buffer.giveBack(scratch) }
            while more {
                while zmq_msg_recv(scratch.msg, handle, 0) == -1 {
                    let code = zmq_errno()
                    if code == EINTR { continue }
                    throw ZMQError(code: code, call: "zmq_msg_recv")
                }
                count += 1
                bytes += scratch.count
                more = zmq_msg_more(scratch.msg) != 0
            }
            return .oversized(frames: count, bytes: bytes)
        }
    }

    // MARK: Raw options

    func setRaw(_ option: Int32, _ name: String, _ value: UnsafeRawPointer?, _ size: Int) throws {
        _ = try retryingEINTR("zmq_setsockopt", name) { zmq_setsockopt(handle, option, value, size) }
    }

    func setInt32(_ option: Int32, _ name: String, _ value: Int32) throws {
        var v = value
        try setRaw(option, name, &v, MemoryLayout<Int32>.size)
    }

    func setInt64(_ option: Int32, _ name: String, _ value: Int64) throws {
        var v = value
        try setRaw(option, name, &v, MemoryLayout<Int64>.size)
    }

    func setBytes(_ option: Int32, _ name: String, _ value: [UInt8]) throws {
        try value.withUnsafeBytes { try setRaw(option, name, $0.baseAddress, $0.count) }
    }

    func int32Option(_ option: Int32, _ name: String) throws -> Int32 {
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        _ = try retryingEINTR("zmq_getsockopt", name) { zmq_getsockopt(handle, option, &value, &size) }
        return value
    }

    func stringOption(_ option: Int32, _ name: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: 512)
        var size = buffer.count
        _ = try retryingEINTR("zmq_getsockopt", name) { zmq_getsockopt(handle, option, &buffer, &size) }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
