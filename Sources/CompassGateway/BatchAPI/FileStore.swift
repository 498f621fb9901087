import CompassProtocol
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A file of the Files API: uploaded batch input, or a batch's output or error file.
public struct FileObject: Sendable, Codable, Equatable {
    public var id: String
    public var bytes: Int
    public var createdAt: Int
    public var filename: String
    public var purpose: String

    enum CodingKeys: String, CodingKey {
        case id, bytes, createdAt = "created_at", filename, purpose
    }

    var json: JSON {
        .object([("id", .string(id)), ("object", "file"), ("bytes", .int(bytes)), ("created_at", .int(createdAt)),
                 ("filename", .string(filename)), ("purpose", .string(purpose)), ("status", "processed"),
                 ("expires_at", .null), ("status_details", .null)])
    }
}

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

func now() -> Int { Int(Date().timeIntervalSince1970) }

/// Reads a file line by line in chunks, without holding all of it.
struct LineSource {
    private let handle: FileHandle
    private var buffer: [UInt8] = []
    private var start = 0
    private var atEnd = false
    /// The 1-based number of the line last returned.
    private(set) var lineNumber = 0

    init(path: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CocoaError(.fileReadNoSuchFile, userInfo: [NSLocalizedDescriptionKey: "cannot open \(path)"])
        }
        self.handle = handle
    }

    func close() { try? handle.close() }

    /// The next line without its newline (and without a trailing carriage return); nil at the end.
    mutating func next() throws -> ArraySlice<UInt8>? {
        while true {
            if let newline = buffer[start...].firstIndex(of: 0x0A) {
                var line = buffer[start..<newline]
                start = newline + 1
                if line.last == 0x0D { line = line.dropLast() }
                lineNumber += 1
                return line
            }
            if atEnd {
                guard start < buffer.count else { return nil }
                let line = buffer[start...]
                start = buffer.count
                lineNumber += 1
                return line
            }
            buffer.removeFirst(start)
            start = 0
            let chunk = try handle.read(upToCount: 1 << 20) ?? Data()
            if chunk.isEmpty { atEnd = true } else { buffer += chunk }
        }
    }
}

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

/// `multipart/form-data` bodies (the Files API upload).
enum Multipart {
    struct Part {
        var name: String
        var filename: String?
        var body: ArraySlice<UInt8>
    }

    /// The boundary of a `multipart/form-data; boundary=...` content type.
    static func boundary(_ contentType: String) -> String? {
        let pieces = contentType.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        guard pieces.first?.lowercased() == "multipart/form-data" else { return nil }
        for piece in pieces.dropFirst() where piece.lowercased().hasPrefix("boundary=") {
            var value = String(piece.dropFirst("boundary=".count))
            if value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            return value.isEmpty ? nil : value
        }
        return nil
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        let n = needle.count
        guard n > 0, from >= 0, from + n <= haystack.count else { return nil }
        return haystack.withUnsafeBytes { h -> Int? in
            needle.withUnsafeBytes { pattern -> Int? in
                let base = h.baseAddress!
                var i = from
                while i + n <= h.count {
                    guard let hit = memchr(base + i, Int32(needle[0]), h.count - n + 1 - i) else { return nil }
                    let j = UnsafeRawPointer(hit) - base
                    if memcmp(hit, pattern.baseAddress!, n) == 0 { return j }
                    i = j + 1
                }
                return nil
            }
        }
    }

    static func parse(_ body: [UInt8], boundary: String) throws(APIError) -> [Part] {
        let delimiter = Array("--\(boundary)".utf8)
        let next = Array("\r\n--\(boundary)".utf8)
        guard !body.isEmpty, var position = find(delimiter, in: body, from: 0) else {
            throw .badRequest("The multipart body has no part (boundary \(boundary))", code: "invalid_multipart")
        }
        position += delimiter.count
        var parts: [Part] = []
        while true {
            // "--" after a delimiter ends the body.
            if position + 2 <= body.count && body[position] == UInt8(ascii: "-") && body[position + 1] == UInt8(ascii: "-") { break }
            guard let headerEnd = find(Array("\r\n\r\n".utf8), in: body, from: position) else {
                throw .badRequest("A multipart part has no end of headers", code: "invalid_multipart")
            }
            let headerText = String(decoding: body[position..<headerEnd], as: UTF8.self)
            let contentStart = headerEnd + 4
            guard let contentEnd = find(next, in: body, from: contentStart) else {
                throw .badRequest("A multipart part does not end with the boundary", code: "invalid_multipart")
            }
            var name: String?
            var filename: String?
            // Header lines end with CRLF ("\r\n" is one Character in Swift: split on the string).
            for raw in headerText.components(separatedBy: "\r\n") {
                let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
                guard line.lowercased().hasPrefix("content-disposition:") else { continue }
                name = parameter("name", in: line)
                filename = parameter("filename", in: line)
            }
            if let name { parts.append(Part(name: name, filename: filename, body: body[contentStart..<contentEnd])) }
            position = contentEnd + next.count
        }
        return parts
    }

    /// `name="value"` (or unquoted) from a Content-Disposition line.
    static func parameter(_ key: String, in line: String) -> String? {
        for piece in line.split(separator: ";").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            guard piece.lowercased().hasPrefix(key + "=") else { continue }
            var value = String(piece.dropFirst(key.count + 1))
            if value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            return value
        }
        return nil
    }
}
