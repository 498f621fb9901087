import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Files kept in a directory: `ID.data` holds the content, `ID.json` the description.
final class FileStore: Sendable {
    let directory: String
    private let files = Mutex<[String: FileObject]>([:])

    init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var loaded: [String: FileObject] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasSuffix(".json") {
            guard let data = FileManager.default.contents(atPath: "\(directory)/\(name)"),
                  let file = try? JSONDecoder().decode(FileObject.self, from: data),
                  FileManager.default.fileExists(atPath: contentPath(file.id)) else { continue }
            loaded[file.id] = file
        }
        files.withLock { $0 = loaded }
    }

    static func newID() -> String {
        "file-" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(24)
    }

    func contentPath(_ id: String) -> String { "\(directory)/\(id).data" }
    func metadataPath(_ id: String) -> String { "\(directory)/\(id).json" }

    /// A path in this directory for a file being written (adopted later with `adopt`).
    func scratchPath() -> String { "\(directory)/scratch-\(UUID().uuidString.lowercased()).tmp" }

    func add(contents: some Collection<UInt8>, filename: String, purpose: String) throws -> FileObject {
        let id = FileStore.newID()
        let data = Data(contents)
        try data.write(to: URL(fileURLWithPath: contentPath(id)))
        return try register(FileObject(id: id, bytes: data.count, createdAt: now(), filename: filename, purpose: purpose))
    }

    /// Makes the finished file at `path` (from `scratchPath`) a file of the store.
    func adopt(path: String, filename: String, purpose: String) throws -> FileObject {
        let id = FileStore.newID()
        guard rename(path, contentPath(id)) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "cannot move \(path) into the file store: errno \(errno)"])
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: contentPath(id))[.size] as? Int) ?? 0
        return try register(FileObject(id: id, bytes: size, createdAt: now(), filename: filename, purpose: purpose))
    }

    private func register(_ file: FileObject) throws -> FileObject {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try encoder.encode(file).write(to: URL(fileURLWithPath: metadataPath(file.id)), options: .atomic)
        files.withLock { $0[file.id] = file }
        return file
    }

    func get(_ id: String) -> FileObject? { files.withLock { $0[id] } }

    /// Newest first.
    func list(purpose: String? = nil) -> [FileObject] {
        files.withLock { Array($0.values) }
            .filter { purpose == nil || $0.purpose == purpose }
            .sorted { ($0.createdAt, $0.id) > ($1.createdAt, $1.id) }
    }

    func delete(_ id: String) -> Bool {
        guard files.withLock({ $0.removeValue(forKey: id) }) != nil else { return false }
        try? FileManager.default.removeItem(atPath: metadataPath(id))
        try? FileManager.default.removeItem(atPath: contentPath(id))
        return true
    }
}
