import CompassProtocol
import Foundation

/// Appends lines to a file.
final class LineWriter {
    private let handle: FileHandle
    private var pending: [UInt8] = []
    private(set) var lines = 0

    init(path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "cannot create \(path)"])
        }
        self.handle = handle
    }

    func write(_ json: JSON) throws {
        json.write(into: &pending)
        pending.append(0x0A)
        lines += 1
        if pending.count >= 1 << 16 { try flush() }
    }

    func flush() throws {
        guard !pending.isEmpty else { return }
        try handle.write(contentsOf: pending)
        pending.removeAll(keepingCapacity: true)
    }

    func close() throws {
        try flush()
        try handle.close()
    }
}
