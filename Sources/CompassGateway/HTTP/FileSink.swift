import Foundation

/// A part's content written to a file as it arrives.
final class FileSink: MultipartStream.Sink {
    let path: String
    private let handle: FileHandle
    private(set) var bytes = 0

    init(path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "cannot create \(path)"])
        }
        self.path = path
        self.handle = handle
    }

    func write(_ chunk: ArraySlice<UInt8>) throws {
        guard !chunk.isEmpty else { return }
        try handle.write(contentsOf: chunk)
        bytes += chunk.count
    }

    func close() { try? handle.close() }
}
