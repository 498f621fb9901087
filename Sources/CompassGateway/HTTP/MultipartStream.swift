import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A `multipart/form-data` body read as it arrives, chunk by chunk, so an upload of any size holds
/// only a chunk and a boundary's length in memory: each part's content goes to a `Sink` as it comes
/// (the Files API writes the `file` part straight to disk). Same grammar as `Multipart.parse`.
struct MultipartStream {
    /// Where one part's content goes.
    protocol Sink: AnyObject {
        func write(_ bytes: ArraySlice<UInt8>) throws
    }

    /// A part's headers, handed to `open` before its content.
    struct PartHead {
        var name: String?
        var filename: String?
    }

    enum Phase { case preamble, afterDelimiter, headers, content, done }

    static let maxHeaderBytes = 16 << 10

    let boundary: String
    let delimiter: [UInt8]
    /// "\r\n--boundary": where a part's content ends.
    let next: [UInt8]
    private var buffer: [UInt8] = []
    private(set) var phase = Phase.preamble
    private var sink: (any Sink)?
    private var sawPart = false
    /// Opens the sink of a part (nil: its content is dropped).
    let open: (PartHead) throws -> (any Sink)?
    /// Called once a part's content is complete.
    let close: (PartHead, (any Sink)?) throws -> Void
    private var head = PartHead()

    init(boundary: String, open: @escaping (PartHead) throws -> (any Sink)?, close: @escaping (PartHead, (any Sink)?) throws -> Void) {
        self.boundary = boundary
        self.delimiter = Array("--\(boundary)".utf8)
        self.next = Array("\r\n--\(boundary)".utf8)
        self.open = open
        self.close = close
    }

    /// Takes the next chunk of the body.
    mutating func feed(_ chunk: some Collection<UInt8>) throws {
        guard phase != .done else { return }  // an epilogue after the last boundary is ignored
        buffer.append(contentsOf: chunk)
        try process()
    }

    /// The body ended: throws unless the last boundary was seen.
    mutating func finish() throws {
        try process()
        switch phase {
        case .done: return
        case .preamble where !sawPart:
            throw APIError.badRequest("The multipart body has no part (boundary \(boundary))", code: "invalid_multipart")
        case .headers:
            throw APIError.badRequest("A multipart part has no end of headers", code: "invalid_multipart")
        default:
            throw APIError.badRequest("A multipart part does not end with the boundary", code: "invalid_multipart")
        }
    }

    private mutating func process() throws {
        while true {
            switch phase {
            case .done:
                buffer.removeAll()
                return
            case .preamble:
                if let at = Multipart.find(delimiter, in: buffer, from: 0) {
                    buffer.removeFirst(at + delimiter.count)
                    phase = .afterDelimiter
                } else {
                    buffer.removeFirst(max(0, buffer.count - (delimiter.count - 1)))
                    return
                }
            case .afterDelimiter:
                guard buffer.count >= 2 else { return }
                // "--" after a delimiter ends the body.
                if buffer[0] == UInt8(ascii: "-") && buffer[1] == UInt8(ascii: "-") {
                    phase = .done
                } else {
                    phase = .headers
                }
            case .headers:
                guard let end = Multipart.find(Array("\r\n\r\n".utf8), in: buffer, from: 0) else {
                    if buffer.count > MultipartStream.maxHeaderBytes {
                        throw APIError.badRequest("A multipart part's headers pass \(MultipartStream.maxHeaderBytes) bytes", code: "invalid_multipart")
                    }
                    return
                }
                let text = String(decoding: buffer[..<end], as: UTF8.self)
                head = PartHead()
                for raw in text.components(separatedBy: "\r\n") {
                    let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
                    guard line.lowercased().hasPrefix("content-disposition:") else { continue }
                    head.name = Multipart.parameter("name", in: line)
                    head.filename = Multipart.parameter("filename", in: line)
                }
                buffer.removeFirst(end + 4)
                sink = try open(head)
                sawPart = true
                phase = .content
            case .content:
                if let at = Multipart.find(next, in: buffer, from: 0) {
                    try sink?.write(buffer[..<at])
                    try close(head, sink)
                    sink = nil
                    buffer.removeFirst(at + next.count)
                    phase = .afterDelimiter
                } else {
                    // Everything but what could be the start of the next boundary is content.
                    let safe = max(0, buffer.count - (next.count - 1))
                    if safe > 0 {
                        try sink?.write(buffer[..<safe])
                        buffer.removeFirst(safe)
                    }
                    return
                }
            }
        }
    }
}
