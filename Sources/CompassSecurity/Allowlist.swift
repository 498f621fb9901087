import Foundation
import ZMQ

/// The public keys a broker admits on one socket: a directory of public certificates (`*.pub`;
/// secret `*.key` files there are ignored, so deleting a `.pub` revokes its key) or a file with
/// one Z85 key (or certificate line) per line. Reloaded when it changes.
public struct Allowlist: Sendable, Equatable {
    public let path: String
    public private(set) var keys: Set<String> = []
    /// Where each key was read: its file's name in a directory, or its line in a file of keys.
    public private(set) var sources: [String: String] = [:]
    /// What was read and not used, said plainly (a `.pub` file without a public key, a bad line).
    public private(set) var skipped: [String] = []
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
        var found: [String: String] = [:]
        var ignored: [String] = []
        if isDirectory.boolValue {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else {
                throw SecurityError("cannot list the allowlist directory \(path)")
            }
            let directory = path.hasSuffix("/") ? String(path.dropLast()) : path
            for name in names.sorted() where name.hasSuffix(".pub") {
                // Always a file here, never taken for a key itself (see KeyFiles.loadPublic).
                do {
                    found[try KeyFiles.loadPublicFile("\(directory)/\(name)")] = name
                } catch {
                    ignored.append("\(name): \(error)")
                }
            }
        } else {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw SecurityError("cannot read the allowlist \(path)") }
            for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
                if CurveKey.decode(trimmed) != nil { found[trimmed] = "line \(index + 1)" }
                else if let key = KeyFiles.value("public-key", in: String(line)), CurveKey.decode(key) != nil { found[key] = "line \(index + 1)" }
                else if !["curve", "metadata"].contains(trimmed) && !trimmed.contains("=") {
                    ignored.append("line \(index + 1): not a 40-character Z85 key")
                }
            }
        }
        keys = Set(found.keys)
        sources = found
        skipped = ignored
        stamp = Allowlist.modified(path)
    }

    /// One line for logs: how many keys, and from where.
    public var summary: String {
        let names = Set(sources.values).sorted()
        let listed = names.prefix(8).joined(separator: ", ") + (names.count > 8 ? ", …" : "")
        var text = "\(path): \(keys.count) key\(keys.count == 1 ? "" : "s")" + (names.isEmpty ? "" : " (\(listed))")
        if !skipped.isEmpty { text += "; ignored \(skipped.joined(separator: "; "))" }
        return text
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
