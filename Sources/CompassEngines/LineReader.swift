#if canImport(Glibc)
import Glibc
#endif

/// Splits what a pipe delivers into lines. It reads into its own buffer and hands each line on where
/// it lies, so a line's bytes are copied only when an unfinished line moves to the buffer's front.
final class LineReader {
    private var storage = [UInt8](repeating: 0, count: LineReader.initialSize)
    /// The unread bytes are `storage[start..<end]`.
    private var start = 0
    private var end = 0
    private static let initialSize = 1 << 16

    /// Reads once from `fd` and hands every complete line (without its terminator) to `body`.
    /// Lines end at LF, and also at CR with `splitCR` (progress bars). Returns false at end of file
    /// or on a read error; an unfinished last line is then handed on too when `flushPartial`.
    func read(_ fd: Int32, splitCR: Bool = false, flushPartial: Bool = false, _ body: (UnsafeRawBufferPointer) -> Void) -> Bool {
        makeRoom()
        var n: Int
        repeat {
            n = storage.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + end, $0.count - end) }
        } while n < 0 && errno == EINTR
        if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
        guard n > 0 else {
            if flushPartial && end > start { storage.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[start..<end])) } }
            start = 0
            end = 0
            return false
        }
        let scanFrom = end
        end += n
        storage.withUnsafeBytes { raw in
            var i = scanFrom
            while i < end {
                let stop: Int
                if splitCR {
                    guard let j = (i..<end).first(where: { raw[$0] == 0x0a || raw[$0] == 0x0d }) else { break }
                    stop = j
                } else {
                    guard let p = memchr(raw.baseAddress! + i, 0x0a, end - i) else { break }
                    stop = raw.baseAddress!.distance(to: UnsafeRawPointer(p))
                }
                if stop > start { body(UnsafeRawBufferPointer(rebasing: raw[start..<stop])) }
                start = stop + 1
                i = stop + 1
            }
        }
        if start == end {
            start = 0
            end = 0
            // A very long line grew the buffer: give the memory back.
            if storage.count > 16 * Self.initialSize { storage = [UInt8](repeating: 0, count: Self.initialSize) }
        }
        return true
    }

    /// Makes room for one more read: moves an unfinished line to the front, or doubles the buffer
    /// when that line fills it.
    private func makeRoom() {
        guard storage.count - end < Self.initialSize / 4 else { return }
        if start > 0 {
            storage.withUnsafeMutableBytes { raw in
                _ = memmove(raw.baseAddress!, raw.baseAddress! + start, end - start)
            }
            end -= start
            start = 0
        }
        if storage.count - end < Self.initialSize / 4 {
            storage.append(contentsOf: repeatElement(0, count: storage.count))
        }
    }
}
