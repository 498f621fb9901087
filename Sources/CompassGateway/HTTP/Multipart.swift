import Foundation
#if canImport(Glibc)
import Glibc
#endif

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
