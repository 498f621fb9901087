@testable import CompassGateway
import CompassProtocol
import Foundation
import Testing

@Suite("OpenAI response bodies with logprobs")
struct RenderTests {
    func call(_ text: String, _ endpoint: Endpoint) throws -> Call {
        try Call.parse(try JSON.parse(Array(text.utf8)), endpoint: endpoint)
    }

    let prompt = TokenLogprobs(tokenIDs: [1, 2, 3], tokens: ["A", " b", " é"], tokenLogprobs: [nil, -1.5, -2],
                               topLogprobs: [nil, [TopLogprob(tokenID: 9, token: " z", logprob: -0.5)], [TopLogprob(tokenID: 3, token: " é", logprob: -2)]])
    let generated = TokenLogprobs(tokenIDs: [4], tokens: [" d"], tokenLogprobs: [-0.25],
                                  topLogprobs: [[TopLogprob(tokenID: 4, token: " d", logprob: -0.25)]])

    func result(_ withPrompt: Bool = true) -> InferenceResult {
        InferenceResult(customID: "g1", text: " d", promptTokens: 3, completionTokens: 1, finishReason: "length",
                        logprobs: generated, promptLogprobs: withPrompt ? prompt : nil)
    }

    /// lm-evaluation-harness's loglikelihood request: the prompt's positions, then the generated one.
    @Test func echoedCompletionLogprobs() throws {
        let c = try call(#"{"model":"m","prompt":"A b é","max_tokens":1,"echo":true,"logprobs":1}"#, .completions)
        let choice = try #require(Render.body(c, [result()], id: "cmpl-1", created: 0)["choices"]?.array?.first)
        #expect(choice["text"] == .string("A b é d"))
        let logprobs = try #require(choice["logprobs"])
        #expect(logprobs["tokens"] == .array(["A", " b", " é", " d"]))
        #expect(logprobs["token_logprobs"] == .array([.null, .double(-1.5), .double(-2), .double(-0.25)]))
        // The chosen token joins the top-k where it is not among them (" b" after " z"), as OpenAI does.
        #expect(logprobs["top_logprobs"] == .array([.null, .object([(" z", .double(-0.5)), (" b", .double(-1.5))]),
                                                    .object([(" é", .double(-2))]), .object([(" d", .double(-0.25))])]))
        #expect(logprobs["text_offset"] == .array([0, 1, 3, 5]))
    }

    @Test func withoutEchoOnlyTheGeneratedTokens() throws {
        let c = try call(#"{"model":"m","prompt":"A b é","max_tokens":1,"logprobs":0}"#, .completions)
        let choice = try #require(Render.body(c, [result(false)], id: "cmpl-1", created: 0)["choices"]?.array?.first)
        #expect(choice["text"] == .string(" d"))
        #expect(choice["logprobs"]?["tokens"] == .array([" d"]))
        #expect(choice["logprobs"]?["text_offset"] == .array([0]))
        let plain = try call(#"{"model":"m","prompt":"A b é"}"#, .completions)
        #expect(Render.body(plain, [result(false)], id: "cmpl-1", created: 0)["choices"]?.array?.first?["logprobs"] == .null)
    }

    /// A token-id prompt has no text: its echo is the engine's tokens, joined.
    @Test func echoOfATokenIDPrompt() throws {
        let c = try call(#"{"model":"m","prompt":[1,2,3],"max_tokens":0,"echo":true}"#, .completions)
        var r = result()
        r.text = ""
        r.logprobs = nil
        r.completionTokens = 0
        let choice = try #require(Render.body(c, [r], id: "cmpl-1", created: 0)["choices"]?.array?.first)
        #expect(choice["text"] == .string("A b é"))
        #expect(choice["logprobs"] == .null)
    }

    @Test func chatLogprobs() throws {
        let c = try call(#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":1}"#, .chat)
        let choice = try #require(Render.body(c, [result(false)], id: "chatcmpl-1", created: 0)["choices"]?.array?.first)
        let d: JSON = .array([32, 100])
        #expect(choice["logprobs"] == .object([("content", .array([
            .object([("token", " d"), ("logprob", .double(-0.25)), ("bytes", d),
                     ("top_logprobs", .array([.object([("token", " d"), ("logprob", .double(-0.25)), ("bytes", d)])]))]),
        ]))]))
    }

    @Test func streamedChunksCarryTheLogprobs() throws {
        let c = try call(#"{"model":"m","prompt":"A b é","max_tokens":1,"echo":true,"logprobs":1,"stream":true}"#, .completions)
        let chunks = Render.chunks(c, [result()], id: "cmpl-1", created: 0)
        let first = try #require(chunks.first?["choices"]?.array?.first)
        #expect(first["logprobs"]?["tokens"] == .array(["A", " b", " é", " d"]))
        #expect(chunks.last?["choices"]?.array?.first?["logprobs"] == .null)
        let chat = try call(#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"stream":true}"#, .chat)
        let delta = try #require(Render.chunks(chat, [result(false)], id: "c", created: 0).first?["choices"]?.array?.first)
        #expect(delta["logprobs"]?["content"]?.array?.count == 1)
    }
}
