import Foundation

/// A YAML document built in order, for the Kubernetes manifests `compass render` writes.
///
/// Kept small and strict rather than general: block style only, and every string that YAML could
/// read as anything but that string (a number, a boolean, null, an indicator) is written as a
/// double-quoted JSON string, so `"0"` in an env value stays the string Kubernetes requires.
indirect enum RenderYAML: Equatable {
    case string(String)
    case int(Int)
    case bool(Bool)
    /// Keys in the order given; a key may carry a comment written on the line above it.
    case map([Entry])
    case list([RenderYAML])

    struct Entry: Equatable {
        var key: String
        var value: RenderYAML
        var comment: String?

        init(_ key: String, _ value: RenderYAML, comment: String? = nil) {
            self.key = key
            self.value = value
            self.comment = comment
        }
    }

    /// The document as YAML text ending in a newline.
    var text: String {
        var lines: [String] = []
        write(into: &lines, indent: 0)
        return lines.joined(separator: "\n") + "\n"
    }

    private var isEmptyCollection: Bool {
        switch self {
        case .map(let entries): return entries.isEmpty
        case .list(let items): return items.isEmpty
        default: return false
        }
    }

    /// The value written on the same line as its key or dash, when it fits there.
    private var inline: String? {
        switch self {
        case .string(let s): return RenderYAML.quote(s)
        case .int(let n): return "\(n)"
        case .bool(let b): return b ? "true" : "false"
        case .map(let entries): return entries.isEmpty ? "{}" : nil
        case .list(let items): return items.isEmpty ? "[]" : nil
        }
    }

    private func write(into lines: inout [String], indent: Int) {
        let pad = String(repeating: " ", count: indent)
        switch self {
        case .map(let entries) where !entries.isEmpty:
            for entry in entries {
                if let comment = entry.comment {
                    for line in comment.split(separator: "\n", omittingEmptySubsequences: false) {
                        lines.append("\(pad)# \(line)".trimmingTrailingSpaces())
                    }
                }
                let key = RenderYAML.quote(entry.key)
                if let inline = entry.value.inline {
                    lines.append("\(pad)\(key): \(inline)")
                } else {
                    lines.append("\(pad)\(key):")
                    // Lists sit at the key's indentation (the usual Kubernetes style); maps go one level in.
                    if case .list = entry.value {
                        entry.value.write(into: &lines, indent: indent)
                    } else {
                        entry.value.write(into: &lines, indent: indent + 2)
                    }
                }
            }
        case .list(let items) where !items.isEmpty:
            for item in items {
                if let inline = item.inline {
                    lines.append("\(pad)- \(inline)")
                    continue
                }
                // A nested collection: write it two deeper, then put the dash on its first line.
                var nested: [String] = []
                item.write(into: &nested, indent: indent + 2)
                guard let firstContent = nested.firstIndex(where: { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") }) else {
                    continue
                }
                lines.append(contentsOf: nested[..<firstContent])
                let first = nested[firstContent]
                lines.append("\(pad)- " + first.dropFirst(indent + 2))
                lines.append(contentsOf: nested[(firstContent + 1)...])
            }
        default:
            lines.append(pad + (inline ?? ""))
        }
    }

    /// Words YAML 1.1 or 1.2 reads as booleans or null when unquoted.
    private static let reserved: Set<String> = ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"]

    /// `s` as a plain scalar when YAML reads that back as exactly this string, else double-quoted.
    static func quote(_ s: String) -> String {
        let safe = s.unicodeScalars.allSatisfy { c in
            (c.value < 128 && (CharacterSet.alphanumerics.contains(c) || "_./-@%+=,:".unicodeScalars.contains(c)))
        }
        let scalars = Array(s.unicodeScalars)
        let startsWell: Bool
        if let c = scalars.first, c == "-" {
            // "--flag" and "-x" are plain; "-1", "-.5", "-" and "---" are not.
            startsWell = scalars.count > 1 && (CharacterSet.letters.contains(scalars[1]) || (scalars[1] == "-" && scalars.count > 2 && scalars[2] != "-"))
        } else {
            startsWell = scalars.first.map { c in c.value < 128 && (CharacterSet.letters.contains(c) || c == "/") } ?? false
        }
        // ": " and " #" cannot occur (no spaces allowed); a trailing ':' could read as a key.
        if safe, startsWell, !s.hasSuffix(":"), !reserved.contains(s.lowercased()) { return s }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        let data = (try? encoder.encode(s)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
