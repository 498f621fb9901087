import CompassProtocol
import Foundation

/// The two generation endpoints the gateway serves.
public enum Endpoint: String, Sendable, CaseIterable {
    case completions = "/v1/completions"
    case chat = "/v1/chat/completions"
}

/// One OpenAI request (an HTTP body, or the body of a Batch API line) read into compass requests:
/// one per prompt (a completion's `prompt` may be a list), all for the pool `model` names.
public struct Call: Sendable {
    public var endpoint: Endpoint
    /// The model, which names the pool.
    public var model: String
    /// One compass request per choice to produce; `custom_id` is filled in when batched.
    public var requests: [InferenceRequest]
    public var stream = false
    /// `stream_options.include_usage`: a last chunk with the usage.
    public var includeUsage = false
    /// Completions with `echo`: the prompt goes before each choice's text.
    public var echo = false

    /// Reads a request body. Unknown fields are ignored (as vLLM does); fields the engine cannot
    /// honour (`n` > 1, `logprobs`, token-id prompts, non-text content, tools) are a 400.
    public static func parse(_ body: JSON, endpoint: Endpoint) throws(APIError) -> Call {
        guard body.isObject else { throw .badRequest("The request body must be a JSON object") }
        let reader = FieldReader(body: body)
        let model = try reader.requiredString("model")
        if let n = try reader.int("n"), n != 1 {
            throw .badRequest("n=\(n) is not supported: the gateway returns one choice per prompt (send n=1, or separate requests)",
                              code: "unsupported_parameter", param: "n")
        }
        if let bestOf = try reader.int("best_of"), bestOf != 1 {
            throw .badRequest("best_of=\(bestOf) is not supported", code: "unsupported_parameter", param: "best_of")
        }
        var template = InferenceRequest(customID: "", prompt: "")
        template.prompt = nil
        template.temperature = try reader.double("temperature")
        template.topP = try reader.double("top_p")
        template.seed = try reader.int("seed")
        template.ignoreEOS = try reader.bool("ignore_eos")
        template.stop = try reader.stop()
        var maxTokens = try reader.int("max_completion_tokens")
        if maxTokens == nil { maxTokens = try reader.int("max_tokens") }
        if let maxTokens, maxTokens < 0 { throw .badRequest("max_tokens must not be negative", param: "max_tokens") }
        let stream = try reader.bool("stream") ?? false
        var includeUsage = false
        if let options = body["stream_options"], !options.isNull {
            guard options.isObject else { throw .badRequest("stream_options must be an object", param: "stream_options") }
            let optionReader = FieldReader(body: options, prefix: "stream_options.")
            includeUsage = try optionReader.bool("include_usage") ?? false
        }

        var call = Call(endpoint: endpoint, model: model, requests: [], stream: stream, includeUsage: includeUsage)
        switch endpoint {
        case .completions:
            if let logprobs = body["logprobs"], !logprobs.isNull {
                throw .badRequest("logprobs are not supported by compass engines (generation only: use generate_until-style evaluations)",
                                  code: "unsupported_parameter", param: "logprobs")
            }
            call.echo = try reader.bool("echo") ?? false
            // OpenAI's default for completions is 16 tokens.
            template.maxTokens = maxTokens ?? 16
            for prompt in try reader.prompts() {
                var request = template
                request.prompt = prompt
                call.requests.append(request)
            }
        case .chat:
            if let logprobs = body["logprobs"], logprobs != .bool(false), !logprobs.isNull {
                throw .badRequest("logprobs are not supported by compass engines", code: "unsupported_parameter", param: "logprobs")
            }
            if let tools = body["tools"]?.array, !tools.isEmpty {
                throw .badRequest("tools are not supported by compass engines", code: "unsupported_parameter", param: "tools")
            }
            template.maxTokens = maxTokens
            template.messages = try reader.messages()
            call.requests = [template]
        }
        return call
    }
}

/// Reads typed fields of a JSON object, with messages that name the field.
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

    func double(_ key: String) throws(APIError) -> Double? {
        guard let v = value(key) else { return nil }
        guard let d = v.double else { throw .badRequest("'\(prefix)\(key)' must be a number", param: key) }
        return d
    }

    func bool(_ key: String) throws(APIError) -> Bool? {
        guard let v = value(key) else { return nil }
        guard let b = v.bool else { throw .badRequest("'\(prefix)\(key)' must be true or false", param: key) }
        return b
    }

    /// `stop`: a string or a list of strings.
    func stop() throws(APIError) -> [String]? {
        guard let v = value("stop") else { return nil }
        if let s = v.string { return [s] }
        if let list = v.array {
            var out: [String] = []
            for item in list {
                guard let s = item.string else { throw .badRequest("'stop' must be a string or a list of strings", param: "stop") }
                out.append(s)
            }
            return out.isEmpty ? nil : out
        }
        throw .badRequest("'stop' must be a string or a list of strings", param: "stop")
    }

    /// A completion's `prompt`: a string or a non-empty list of strings (token ids are not supported).
    func prompts() throws(APIError) -> [String] {
        guard let v = value("prompt") else { throw .badRequest("Missing required field 'prompt'", code: "missing_field", param: "prompt") }
        if let s = v.string { return [s] }
        guard let list = v.array, !list.isEmpty else {
            throw .badRequest("'prompt' must be a string or a non-empty list of strings", param: "prompt")
        }
        var out: [String] = []
        for item in list {
            guard let s = item.string else {
                throw .badRequest("'prompt' must be text: token-id prompts are not supported (the gateway has no tokenizer)",
                                  code: "unsupported_parameter", param: "prompt")
            }
            out.append(s)
        }
        return out
    }

    /// A chat request's `messages`: `{role, content}` with string content or text parts.
    func messages() throws(APIError) -> [ChatMessage] {
        guard let v = value("messages") else { throw .badRequest("Missing required field 'messages'", code: "missing_field", param: "messages") }
        guard let list = v.array, !list.isEmpty else { throw .badRequest("'messages' must be a non-empty list", param: "messages") }
        var out: [ChatMessage] = []
        for (i, item) in list.enumerated() {
            guard item.isObject else { throw .badRequest("messages[\(i)] must be an object", param: "messages") }
            guard let role = item["role"]?.string, !role.isEmpty else {
                throw .badRequest("messages[\(i)].role must be a non-empty string", param: "messages")
            }
            let content: String
            switch item["content"] {
            case .none, .null?: content = ""
            case .string(let s)?: content = s
            case .array(let parts)?:
                var text = ""
                for part in parts {
                    if let s = part.string { text += s; continue }
                    guard part["type"]?.string == "text", let s = part["text"]?.string else {
                        throw .badRequest("messages[\(i)].content: only text parts are supported", code: "unsupported_parameter", param: "messages")
                    }
                    text += s
                }
                content = text
            default:
                throw .badRequest("messages[\(i)].content must be a string or a list of text parts", param: "messages")
            }
            out.append(ChatMessage(role: role, content: content))
        }
        return out
    }
}
