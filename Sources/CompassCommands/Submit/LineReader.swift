import CompassSystem
import Foundation

/// Reads a file line by line in 1 MiB chunks, so a prompt file of any size streams.
final class LineReader {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false
    private(set) var lineNumber = 0

    init(path: String) throws {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw CommandFailure(message: "cannot open \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { close(fd) }

    /// The next line without its newline, or nil at the end of the file.
    func next() throws -> [UInt8]? {
        while true {
            if let nl = buffer[start...].firstIndex(of: 0x0a) {
                var line = Array(buffer[start..<nl])
                start = nl + 1
                lineNumber += 1
                if line.last == 0x0d { line.removeLast() }
                return line
            }
            if eof {
                guard start < buffer.count else { return nil }
                let line = Array(buffer[start...])
                start = buffer.count
                lineNumber += 1
                return line
            }
            buffer.removeFirst(start)
            start = 0
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            let n = read(fd, &chunk, chunk.count)
            if n < 0 { throw CommandFailure(message: "read failed: \(String(cString: strerror(errno)))") }
            if n == 0 { eof = true } else { buffer.append(contentsOf: chunk[0..<n]) }
        }
    }

    /// Lines with something other than whitespace in them (for the progress total).
    static func countNonBlankLines(path: String) throws -> Int {
        let reader = try LineReader(path: path)
        var count = 0
        while let line = try reader.next() {
            if line.contains(where: { $0 != 0x20 && $0 != 0x09 }) { count += 1 }
        }
        return count
    }
}

/// Appends lines to a file through a buffer.
final class LineWriter {
    private let fd: Int32
    private var buffer: [UInt8] = []
    let path: String

    init(path: String, truncate: Bool) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : O_APPEND), 0o644)
        if fd < 0 { throw CommandFailure(message: "cannot write \(path): \(String(cString: strerror(errno)))") }
    }

    deinit {
        try? flush()
        close(fd)
    }

    func write(line: [UInt8]) throws {
        buffer += line
        buffer.append(0x0a)
        if buffer.count >= 1 << 16 { try flush() }
    }

    func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try writeAll(fd, $0) }
        buffer.removeAll(keepingCapacity: true)
    }
}
