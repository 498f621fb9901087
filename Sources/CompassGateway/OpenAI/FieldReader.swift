import CompassProtocol

/// Reads the OpenAI-only fields of a JSON object, with messages that name the field.
struct FieldReader {
    let body: JSON
    var prefix = ""

    func value(_ key: String) -> JSON? {
        guard let v = body[key], !v.isNull else { return nil }
        return v
    }

    func requiredString(_ key: String) throws(APIError) -> String {
        guard let v = value(key) else { throw .badRequest("Missing required field '\(prefix)\(key)'", code: "missing_field", param: key) }
        guard let s = v.string, !s.isEmpty else { throw .badRequest("'\(prefix)\(key)' must be a non-empty string", param: key) }
        return s
    }

    func int(_ key: String) throws(APIError) -> Int? {
        guard let v = value(key) else { return nil }
        guard let i = v.int else { throw .badRequest("'\(prefix)\(key)' must be an integer", param: key) }
        return i
    }

    func bool(_ key: String) throws(APIError) -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.bool else { throw .badRequest("'\(prefix)\(key)' must be true or false", param: key) }
        return b
    }

    /// A completion's `prompt`, one compass input per choice: a string, a list of strings, a list
    /// of token ids (one prompt), or a list of token-id lists. The items' values are RequestRules'.
    func prompts() throws(APIError) -> [(String, JSON)] {
        guard let v = value("prompt") else { throw .badRequest("Missing required field 'prompt'", code: "missing_field", param: "prompt") }
        if v.string != nil { return [("prompt", v)] }
        let shape = "'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists"
        guard let list = v.array, let first = list.first else { throw .badRequest(shape, param: "prompt") }
        switch first {
        case .int, .double: return [("prompt_token_ids", v)]
        case .string where list.allSatisfy({ $0.string != nil }): return list.map { ("prompt", $0) }
        case .array where list.allSatisfy({ $0.array != nil }): return list.map { ("prompt_token_ids", $0) }
        default: throw .badRequest(shape, param: "prompt")
        }
    }
}
