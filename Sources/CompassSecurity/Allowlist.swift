import Foundation
import ZMQ

/// The public keys a broker admits on one socket: a directory of public certificates (`*.pub`;
/// secret `*.key` files there are ignored, so deleting a `.pub` revokes its key) or a file with
/// one Z85 key (or certificate) per line. Reloaded when it changes.
public struct Allowlist: Sendable, Equatable {
    public let path: String
    public private(set) var keys: Set<String> = []
    /// The newest modification time seen, to notice edits without a signal.
    var stamp: Date?

    public init(path: String) throws {
        self.path = path
        try reload()
    }

    public func admits(_ key: String) -> Bool { keys.contains(key) }

    /// Reads the keys again; keeps the old set and throws if the path cannot be read.
    public mutating func reload() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw SecurityError("the allowlist \(path) does not exist")
        }
        var found = Set<String>()
        if isDirectory.boolValue {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            for name in names where name.hasSuffix(".pub") {
                if let key = try? KeyFiles.loadPublic("\(path)/\(name)") { found.insert(key) }
            }
        } else {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw SecurityError("cannot read the allowlist \(path)") }
            for line in text.split(separator: "\n") {
                let trimmed = line.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                if CurveKey.decode(trimmed) != nil { found.insert(trimmed) }
                else if let key = KeyFiles.value("public-key", in: String(line)) { found.insert(key) }
            }
        }
        keys = found
        stamp = Allowlist.modified(path)
    }

    /// Whether the files changed since the last reload.
    public var changed: Bool { Allowlist.modified(path) != stamp }

    static func modified(_ path: String) -> Date? {
        var newest = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
        if let names = try? FileManager.default.contentsOfDirectory(atPath: path) {
            for name in names {
                if let date = (try? FileManager.default.attributesOfItem(atPath: "\(path)/\(name)"))?[.modificationDate] as? Date,
                   newest.map({ date > $0 }) ?? true { newest = date }
            }
            newest = newest.map { $0.addingTimeInterval(Double(names.count) / 1e6) } // a removed file changes the count
        }
        return newest
    }
}
