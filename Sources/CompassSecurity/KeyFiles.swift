import Foundation
import ZMQ

#if canImport(Glibc)
import Glibc
#endif

/// CURVE key files in the ZeroMQ certificate format (CZMQ's zcert, ZPL syntax), so compass keys
/// work with other ZeroMQ tools and theirs with compass:
///
///     NAME.pub (public, share it)        NAME.key (secret, mode 0600, keep it)
///     curve                              curve
///         public-key = "Z85…40 chars"        public-key = "Z85…"
///                                            secret-key = "Z85…"
public enum KeyFiles {
    /// Writes `NAME.key` and `NAME.pub` in `directory`; refuses to overwrite existing files.
    @discardableResult
    public static func create(name: String, in directory: String) throws -> (secret: String, public: String, keys: CurveKeyPair) {
        guard !name.isEmpty, !name.contains("/") else { throw SecurityError("a key name is a plain file name, got '\(name)'") }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let secretPath = "\(directory)/\(name).key", publicPath = "\(directory)/\(name).pub"
        for path in [secretPath, publicPath] where FileManager.default.fileExists(atPath: path) {
            throw SecurityError("\(path) exists; choose another name or remove it first")
        }
        let keys = try CurveKeyPair.generate()
        let header = "#   ZeroMQ CURVE certificate written by compass keys new \(name)\n"
        try write(secretPath, header + "#   **Secret**: keep this file private\nmetadata\n    name = \"\(name)\"\ncurve\n    public-key = \"\(keys.publicKey)\"\n    secret-key = \"\(keys.secretKey)\"\n", mode: 0o600)
        try write(publicPath, header + "#   Public: share it, and list it in a broker's allowlist\nmetadata\n    name = \"\(name)\"\ncurve\n    public-key = \"\(keys.publicKey)\"\n", mode: 0o644)
        return (secretPath, publicPath, keys)
    }

    static func write(_ path: String, _ text: String, mode: mode_t) throws {
        // Created with its final mode, so a secret is never readable by others, not even briefly.
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw SecurityError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ Glibc.write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw SecurityError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The value of `key = "…"` lines in a certificate.
    static func value(_ key: String, in text: String) -> String? {
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard trimmed.hasPrefix(key), let eq = trimmed.firstIndex(of: "=") else { continue }
            guard trimmed[trimmed.startIndex..<eq].trimmingCharacters(in: .whitespaces) == key else { continue }
            return trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }
        return nil
    }

    /// A key pair from a secret certificate file (`NAME.key`).
    public static func loadSecret(_ path: String) throws -> CurveKeyPair {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw SecurityError("cannot read the key file \(path)") }
        guard let secret = value("secret-key", in: text), CurveKey.decode(secret) != nil else {
            throw SecurityError("\(path) holds no secret key (expected a 'secret-key = \"…\"' line; is it the .pub file?)")
        }
        if let attributes = try? FileManager.default.attributesOfItem(atPath: path),
           let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0 {
            throw SecurityError("\(path) is readable by others (mode \(String(mode, radix: 8))): chmod 600 it")
        }
        return try CurveKeyPair(secretKey: secret)
    }

    /// A public key given as a certificate file holding one, or as a 40-character Z85 string.
    ///
    /// A path that names a file is read as one, before anything else: a path can itself be 40 Z85
    /// characters (letters, digits, `/`, `.` and `-` all are), and taking such a path for a key
    /// made an allowlist hold the path instead of the key in the file.
    public static func loadPublic(_ keyOrPath: String) throws -> String {
        if FileManager.default.fileExists(atPath: keyOrPath) { return try loadPublicFile(keyOrPath) }
        if CurveKey.decode(keyOrPath) != nil { return keyOrPath }
        throw SecurityError("'\(keyOrPath)' is neither a readable key file nor a 40-character Z85 key")
    }

    /// The public key of a certificate file (`NAME.pub`, or `NAME.key`, which holds it too).
    public static func loadPublicFile(_ path: String) throws -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw SecurityError("cannot read the key file \(path)")
        }
        guard let key = value("public-key", in: text), CurveKey.decode(key) != nil else {
            throw SecurityError("\(path) holds no public key (expected a 'public-key = \"…\"' line of 40 Z85 characters)")
        }
        return key
    }
}

/// A CURVE or allowlist problem, said plainly.
public struct SecurityError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
