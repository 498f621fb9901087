import CompassProtocol
import ZMQ

/// Reading and writing the fixed-width fields of the protocol.
public enum Field {
    /// A 1-byte frame (tests build hostile messages by hand with it; encoders write to a `MessageSink`).
    public static func u8(_ value: UInt8) -> Frame { Frame(bytes: [value]) }

    static func readU32(_ frame: Frame, _ name: String) throws(ProtocolError) -> UInt32 {
        guard frame.count == 4 else { throw ProtocolError(.badFrame, "\(name) must be a 4-byte big-endian integer, got \(frame.count) bytes") }
        return frame.withUnsafeBytes { b in UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3]) }
    }

    static func readU8(_ frame: Frame, _ name: String) throws(ProtocolError) -> UInt8 {
        guard frame.count == 1 else { throw ProtocolError(.badFrame, "\(name) must be 1 byte, got \(frame.count)") }
        return frame.withUnsafeBytes { $0[0] }
    }

    /// A UTF-8 string field of 1...maxBytes bytes (0...maxBytes when `allowEmpty`).
    static func readString(_ frame: Frame, _ name: String, max: Int, allowEmpty: Bool = false) throws(ProtocolError) -> String {
        let count = frame.count
        guard count <= max else { throw ProtocolError(.badFrame, "\(name) is \(count) bytes, the limit is \(max)") }
        guard allowEmpty || count > 0 else { throw ProtocolError(.badFrame, "\(name) is empty") }
        guard let s = frame.withUnsafeBytes({ bytes in
            // ASCII (batch ids, pools, sessions as clients make them) is valid UTF-8 as it is:
            // `String(decoding:)` then builds the same string without the generic validating path.
            bytes.allSatisfy { $0 < 0x80 } ? String(decoding: bytes, as: UTF8.self) : String(validating: bytes, as: UTF8.self)
        }) else {
            throw ProtocolError(.badFrame, "\(name) is not valid UTF-8")
        }
        return s
    }

    /// Text fields from peers (messages, reasons) are truncated rather than refused.
    static func readText(_ frame: Frame) -> String {
        frame.withUnsafeBytes { String(decoding: $0.prefix(WireProtocol.maxMessageTextBytes), as: UTF8.self) }
    }
}

/// The frames after the command byte, indexed from 0, without copying them into a new array.
struct CommandFields {
    let frames: ArraySlice<Frame>

    init(_ message: ArraySlice<Frame>) { frames = message.dropFirst(2) }

    var count: Int { frames.count }
    subscript(_ index: Int) -> Frame { frames[frames.startIndex + index] }
}

extension BatchMeta {
    /// The meta as a frame.
    public var frame: Frame { Frame(bytes: bytes) }

    /// Writes the meta as one frame.
    @inlinable
    func write<S: MessageSink>(to sink: inout S) {
        withUnsafeBytes { sink.append(bytes: $0, last: false) }
    }

    /// Decodes a meta frame. Longer frames are accepted (later versions may append fields).
    public static func decode(_ frame: Frame) throws(ProtocolError) -> BatchMeta {
        guard let meta = frame.withUnsafeBytes({ BatchMeta(bytes: $0) }) else {
            throw ProtocolError(.badFrame, "batch meta must be at least \(byteCount) bytes, got \(frame.count)")
        }
        return meta
    }
}

extension WireProtocol {
    /// Frame 0 of every message.
    public static func headerFrame() -> Frame { Frame(bytes: header) }

    /// Writes frame 0 (the header) and frame 1 (the command byte) of a message.
    @inlinable
    static func write<S: MessageSink>(command: UInt8, last: Bool = false, to sink: inout S) {
        sink.append(bytes: header)
        sink.append(u8: command, last: last)
    }

    /// Checks frame 0: the signature, then the version.
    public static func checkHeader(_ frame: Frame) throws(ProtocolError) {
        try frame.withUnsafeBytes { (b) throws(ProtocolError) in try checkHeader(b) }
    }

    /// Reads the command byte (frame 1) after checking the header.
    static func command(_ frames: ArraySlice<Frame>) throws(ProtocolError) -> UInt8 {
        guard let first = frames.first else { throw ProtocolError(.badFrame, "empty message") }
        try checkHeader(first)
        guard frames.count >= 2 else { throw ProtocolError(.badFrame, "missing command frame") }
        return try Field.readU8(frames[frames.startIndex + 1], "command")
    }
}
