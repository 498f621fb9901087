/// Reads one line of a prompt file. Two shapes are accepted:
/// - compass: a payload request, `{"custom_id": "q1", "prompt": "...", "max_tokens": 32}` (every
///   field of docs/protocol.md, Payloads: messages, token ids, logprobs, scoring continuations);
/// - OpenAI Batch API: `{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`,
///   where `body` holds `messages` or `prompt` (text or token ids), `max_tokens` (or
///   `max_completion_tokens`), `temperature`, ...
/// Either way the request is checked by `RequestRules`, the one validator of requests.
public enum InputLine {
    public typealias Problem = RequestRules.Problem

    public static func parse(_ line: [UInt8]) -> Result<InferenceRequest, Problem> {
        guard let object = try? JSON.parse(line), object.isObject else {
            return .failure(Problem(customID: nil, message: "not a JSON object"))
        }
        guard let body = object["body"], !body.isNull else { return RequestRules.validate(object) }
        let customID = object["custom_id"]?.string
        guard case .object(var fields) = body else {
            return .failure(Problem(customID: customID, message: "\"body\" must be an object"))
        }
        if let url = object["url"]?.string, url != "/v1/chat/completions", url != "/v1/completions" {
            return .failure(Problem(customID: customID, message: "url \(url) is not supported (use /v1/chat/completions or /v1/completions)"))
        }
        func has(_ key: String) -> Bool { fields.contains { $0.0 == key } }
        fields.removeAll { $0.0 == "custom_id" }
        fields.append(("custom_id", object["custom_id"] ?? .null))
        if !has("max_tokens"), let n = body["max_completion_tokens"] { fields.append(("max_tokens", n)) }
        // A completion's prompt given as token ids.
        if case .array(let items)? = body["prompt"], items.allSatisfy({ if case .int = $0 { true } else { false } }) {
            fields.removeAll { $0.0 == "prompt" }
            fields.append(("prompt_token_ids", .array(items)))
        }
        return RequestRules.validate(.object(fields))
    }
}
