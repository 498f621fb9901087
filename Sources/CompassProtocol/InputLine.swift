import Foundation

/// Reads one line of a prompt file. Two shapes are accepted:
/// - compass: `{"custom_id": "q1", "prompt": "...", "max_tokens": 32}` (or `messages` instead of `prompt`);
/// - OpenAI Batch API: `{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`,
///   where `body` holds `messages` or `prompt`, `max_tokens` (or `max_completion_tokens`), `temperature`, ...
public enum InputLine {
    /// Why a line could not be read, for a message that names the line.
    public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
        public var customID: String?
        public var message: String
        public var description: String { message }
    }

    public static func parse(_ line: [UInt8]) -> Result<InferenceRequest, Problem> {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
            return .failure(Problem(customID: nil, message: "not a JSON object"))
        }
        guard let customID = object["custom_id"] as? String, !customID.isEmpty else {
            return .failure(Problem(customID: nil, message: "missing \"custom_id\" (a non-empty string)"))
        }
        var fields = object
        if let body = object["body"] {
            guard let bodyObject = body as? [String: Any] else {
                return .failure(Problem(customID: customID, message: "\"body\" must be an object"))
            }
            if let url = object["url"] as? String, url != "/v1/chat/completions", url != "/v1/completions" {
                return .failure(Problem(customID: customID, message: "url \(url) is not supported (use /v1/chat/completions or /v1/completions)"))
            }
            fields = bodyObject
            if fields["max_tokens"] == nil, let n = bodyObject["max_completion_tokens"] { fields["max_tokens"] = n }
        }
        fields["custom_id"] = customID
        // Keep only what a request understands; model names and the like stay with the pool.
        let known = ["custom_id", "prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "ignore_eos"]
        fields = fields.filter { known.contains($0.key) && !($0.value is NSNull) }
        do {
            let data = try JSONSerialization.data(withJSONObject: fields)
            return .success(try JSONDecoder().decode(InferenceRequest.self, from: data))
        } catch let error as DecodingError {
            return .failure(Problem(customID: customID, message: describe(error)))
        } catch {
            return .failure(Problem(customID: customID, message: "\(error)"))
        }
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, _): return "missing \"\(key.stringValue)\""
        case .typeMismatch(let type, let ctx): return "\"\(ctx.codingPath.map(\.stringValue).joined(separator: "."))\" must be \(type)"
        case .valueNotFound(_, let ctx), .dataCorrupted(let ctx): return ctx.debugDescription
        @unknown default: return "\(error)"
        }
    }
}
