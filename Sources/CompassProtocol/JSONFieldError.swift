/// Says what is wrong with a JSON document a peer sent, in the protocol's words (field names as on
/// the wire), never in the words of the decoder that found it: a peer written in another language
/// reads these messages.
public enum JSONFieldError {
    /// A one-line reason for a decoding failure: a missing required field, a field of the wrong
    /// type or value, or a document that is not JSON at all.
    public static func describe(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "not a valid JSON document" }
        switch error {
        case .keyNotFound(let key, let context):
            return "missing required field '\(path(context.codingPath + [key]))'"
        case .typeMismatch(let type, let context):
            return context.codingPath.isEmpty ? "must be a JSON object"
                : "field '\(path(context.codingPath))' must be \(typeName(type))"
        case .valueNotFound(let type, let context):
            return context.codingPath.isEmpty ? "must be a JSON object"
                : "field '\(path(context.codingPath))' must be \(typeName(type)), not null"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not a valid JSON document" : "field '\(path(context.codingPath))' has an invalid value"
        @unknown default:
            return "not a valid JSON document"
        }
    }

    /// `gpus[0].index` for the coding path of the first GPU's index.
    static func path(_ keys: [any CodingKey]) -> String {
        var out = ""
        for key in keys {
            if let index = key.intValue { out += "[\(index)]" } else { out += out.isEmpty ? key.stringValue : ".\(key.stringValue)" }
        }
        return out
    }

    static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        case is Int.Type, is Int32.Type, is Int64.Type, is UInt32.Type, is UInt64.Type, is UInt.Type: "an integer"
        case is Double.Type, is Float.Type: "a number"
        default: String(describing: type).hasPrefix("Array") ? "a list" : "an object"
        }
    }
}
