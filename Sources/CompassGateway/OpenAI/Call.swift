import CompassProtocol
import Foundation

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
    /// Completions with `echo`: the prompt goes before each choice's text (and its tokens before
    /// the completion's in `logprobs`).
    public var echo = false
    /// Whether the answer carries logprobs: completions `logprobs` (any k), chat `logprobs: true`.
    public var wantsLogprobs = false

    /// Reads a request body. The compass request is built as a JSON object from the body's fields
    /// and checked by `RequestRules`, the one validator of requests (its messages, with `param`
    /// naming the OpenAI field); only what is OpenAI's own (`model`, `n`, `stream`, `echo`, the
    /// shapes of `prompt` and of chat `logprobs`, tools) is checked here. Unknown fields are
    /// ignored (as vLLM does).
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
        var call = Call(endpoint: endpoint, model: model, requests: [])
        call.stream = try reader.bool("stream") ?? false
        if let options = reader.value("stream_options") {
            guard options.isObject else { throw .badRequest("stream_options must be an object", param: "stream_options") }
            call.includeUsage = try FieldReader(body: options, prefix: "stream_options.").bool("include_usage") ?? false
        }

        // The compass request's fields, copied as they are: RequestRules judges their values.
        var fields: [(String, JSON)] = [("custom_id", "request")]
        var origin: [String: String] = [:]  // compass field -> the OpenAI field it came from, where they differ
        let maxTokensField = reader.value("max_completion_tokens") != nil ? "max_completion_tokens" : "max_tokens"
        origin["max_tokens"] = maxTokensField
        if let maxTokens = reader.value(maxTokensField) {
            fields.append(("max_tokens", maxTokens))
        } else if endpoint == .completions {
            fields.append(("max_tokens", 16))  // OpenAI's default for completions
        }
        for key in ["temperature", "top_p", "stop", "seed", "ignore_eos"] {
            if let value = reader.value(key) { fields.append((key, value)) }
        }

        let inputs: [(String, JSON)]
        switch endpoint {
        case .completions:
            call.echo = try reader.bool("echo") ?? false
            inputs = try reader.prompts()
            origin["prompt_token_ids"] = "prompt"
            if let k = reader.value("logprobs") {
                call.wantsLogprobs = true
                fields.append(("logprobs", k))
                // echo: the prompt's tokens come first, with their own logprobs.
                if call.echo { fields.append(("prompt_logprobs", k)) }
                origin["prompt_logprobs"] = "logprobs"
            }
        case .chat:
            if let tools = reader.value("tools")?.array, !tools.isEmpty {
                throw .badRequest("tools are not supported by compass engines", code: "unsupported_parameter", param: "tools")
            }
            guard let messages = reader.value("messages") else {
                throw .badRequest("Missing required field 'messages'", code: "missing_field", param: "messages")
            }
            inputs = [("messages", messages)]
            call.wantsLogprobs = try reader.bool("logprobs") ?? false
            if let k = reader.value("top_logprobs") {
                guard case .int(let top) = k, (0...RequestRules.maxLogprobs).contains(top) else {
                    throw .badRequest("top_logprobs must be an integer from 0 to \(RequestRules.maxLogprobs)", param: "top_logprobs")
                }
                guard call.wantsLogprobs else {
                    throw .badRequest("top_logprobs needs logprobs: true", param: "top_logprobs")
                }
            }
            if call.wantsLogprobs { fields.append(("logprobs", reader.value("top_logprobs") ?? 0)) }
        }

        for (key, value) in inputs {
            var object = fields + [(key, value)]
            // A token-id prompt has no text to echo: the engine's prompt tokens give it.
            if call.echo && key == "prompt_token_ids" && !object.contains(where: { $0.0 == "prompt_logprobs" }) {
                object.append(("prompt_logprobs", 0))
            }
            switch RequestRules.validate(.object(object)) {
            case .success(let request): call.requests.append(request)
            case .failure(let problem):
                let field = RequestRules.field(of: problem) ?? key
                throw .badRequest(problem.message, param: origin[field] ?? field)
            }
        }
        return call
    }

    /// `result` as the answer to request `index`, or the failure it is when the engine left out
    /// the logprobs the request asked for (an engine that cannot score ignores the fields).
    func check(_ result: InferenceResult, _ index: Int) -> Result<InferenceResult, CompassFailure> {
        let request = requests[index]
        let missing: String? =
            if request.promptLogprobs != nil && result.promptLogprobs == nil { "prompt logprobs (which echo needs)" }
            else if request.logprobs != nil && result.logprobs == nil && result.completionTokens > 0 { "logprobs" }
            else { nil }
        guard let missing else { return .success(result) }
        return .failure(CompassFailure(code: CompassFailure.unsupportedCode,
                                       message: "The engine of pool '\(model)' returned no \(missing): it cannot score (engines that score return them: synthetic, and hf with scoring support)"))
    }
}
