@testable import CompassGateway
import CompassProtocol
import Foundation
import Testing

@Suite("OpenAI request bodies and uploads")
struct RequestTests {
    func parse(_ text: String, _ endpoint: Endpoint) throws -> Call {
        try Call.parse(try JSON.parse(Array(text.utf8)), endpoint: endpoint)
    }

    func problem(_ text: String, _ endpoint: Endpoint) -> APIError? {
        do { _ = try parse(text, endpoint); return nil } catch let e as APIError { return e } catch { return nil }
    }

    @Test func completionFields() throws {
        let call = try parse(#"{"model":"m","prompt":["a","b"],"max_tokens":5,"temperature":0.5,"stop":"x","seed":3,"echo":true}"#, .completions)
        #expect(call.model == "m" && call.echo)
        #expect(call.requests.map(\.prompt) == ["a", "b"])
        #expect(call.requests.allSatisfy { $0.maxTokens == 5 && $0.temperature == 0.5 && $0.stop == ["x"] && $0.seed == 3 })
        #expect(try parse(#"{"model":"m","prompt":"p"}"#, .completions).requests[0].maxTokens == 16)
    }

    @Test func chatFields() throws {
        let call = try parse(#"""
        {"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
         "max_completion_tokens":7,"stream":true,"stream_options":{"include_usage":true},"n":1,"logprobs":false}
        """#, .chat)
        #expect(call.requests.count == 1)
        #expect(call.requests[0].messages == [ChatMessage(role: "system", content: "s"), ChatMessage(role: "user", content: "ab")])
        #expect(call.requests[0].maxTokens == 7)
        #expect(call.stream && call.includeUsage)
        #expect(try parse(#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#, .chat).requests[0].maxTokens == nil)
    }

    @Test func tokenIDPromptsEchoAndLogprobs() throws {
        let one = try parse(#"{"model":"m","prompt":[1,2,3],"max_tokens":0,"echo":true,"logprobs":1}"#, .completions)
        #expect(one.requests.count == 1 && one.echo && one.wantsLogprobs)
        #expect(one.requests[0].promptTokenIDs == [1, 2, 3] && one.requests[0].prompt == nil)
        #expect(one.requests[0].maxTokens == 0 && one.requests[0].logprobs == 1 && one.requests[0].promptLogprobs == 1)
        let two = try parse(#"{"model":"m","prompt":[[5],[6,7]],"logprobs":0}"#, .completions)
        #expect(two.requests.map(\.promptTokenIDs) == [[5], [6, 7]])
        #expect(two.requests.allSatisfy { $0.logprobs == 0 && $0.promptLogprobs == nil && $0.maxTokens == 16 })
        // echo of a token-id prompt without logprobs still asks for the prompt's tokens: they are its text.
        let echo = try parse(#"{"model":"m","prompt":[9],"echo":true}"#, .completions)
        #expect(echo.requests[0].promptLogprobs == 0 && echo.requests[0].logprobs == nil && !echo.wantsLogprobs)
        #expect(try parse(#"{"model":"m","prompt":"x","echo":true}"#, .completions).requests[0].promptLogprobs == nil)
    }

    @Test func chatLogprobs() throws {
        let chat = #""model":"m","messages":[{"role":"user","content":"x"}]"#
        let top = try parse("{\(chat),\"logprobs\":true,\"top_logprobs\":2}", .chat)
        #expect(top.wantsLogprobs && top.requests[0].logprobs == 2)
        #expect(try parse("{\(chat),\"logprobs\":true}", .chat).requests[0].logprobs == 0)
        let off = try parse("{\(chat),\"logprobs\":false}", .chat)
        #expect(!off.wantsLogprobs && off.requests[0].logprobs == nil)
        #expect(problem("{\(chat),\"top_logprobs\":2}", .chat)?.param == "top_logprobs")
        #expect(problem("{\(chat),\"logprobs\":true,\"top_logprobs\":21}", .chat)?.param == "top_logprobs")
        #expect(problem("{\(chat),\"logprobs\":1}", .chat)?.param == "logprobs")
    }

    @Test func unsupportedAndMalformedFieldsAre400WithTheParameter() {
        let cases: [(String, Endpoint, String)] = [
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#, .chat, "n"),
            (#"{"model":"m","prompt":[1,"a"]}"#, .completions, "prompt"),
            (#"{"model":"m","prompt":[]}"#, .completions, "prompt"),
            (#"{"model":"m","prompt":[[1],"a"]}"#, .completions, "prompt"),
            (#"{"prompt":"x"}"#, .completions, "model"),
            (#"{"model":"m"}"#, .completions, "prompt"),
            (#"{"model":"m"}"#, .chat, "messages"),
            (#"{"model":"m","messages":[{"content":"x"}]}"#, .chat, "messages"),
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#, .chat, "tools"),
            (#"{"model":"m","prompt":"x","echo":"yes"}"#, .completions, "echo"),
        ]
        for (body, endpoint, param) in cases {
            let error = problem(body, endpoint)
            #expect(error?.status == .badRequest, "\(body)")
            #expect(error?.param == param, "\(body)")
        }
        #expect(problem("[1]", .chat)?.status == .badRequest)
    }

    /// The values are RequestRules': the table's message, `param` the OpenAI field it came from.
    @Test func valuesAreJudgedByRequestRules() {
        let cases: [(String, Endpoint, String, String)] = [
            (#""temperature":-5"#, .completions, "temperature", "temperature must be a number from 0 to 100"),
            (#""temperature":"hot""#, .chat, "temperature", "temperature must be a number from 0 to 100"),
            (#""top_p":7"#, .completions, "top_p", "top_p must be a number above 0 and at most 1"),
            (#""max_tokens":9223372036854775807"#, .completions, "max_tokens", "max_tokens must be an integer from 0 to 1048576"),
            (#""max_tokens":-1"#, .chat, "max_tokens", "max_tokens must be an integer from 0 to 1048576"),
            (#""max_completion_tokens":1.5"#, .chat, "max_completion_tokens", "max_tokens must be an integer from 0 to 1048576"),
            (#""stop":[1]"#, .completions, "stop", "stop must be a string or a list of strings"),
            (#""seed":1.5"#, .completions, "seed", "seed must be an integer"),
            (#""ignore_eos":"yes""#, .completions, "ignore_eos", "ignore_eos must be true or false"),
            (#""logprobs":21"#, .completions, "logprobs", "logprobs must be an integer from 0 to 20"),
            (#""logprobs":true"#, .completions, "logprobs", "logprobs must be an integer from 0 to 20"),
        ]
        for (field, endpoint, param, message) in cases {
            let input = endpoint == .chat ? #""messages":[{"role":"user","content":"x"}]"# : #""prompt":"x""#
            let error = problem("{\"model\":\"m\",\(input),\(field)}", endpoint)
            #expect(error?.status == .badRequest, "\(field)")
            #expect(error?.param == param, "\(field)")
            #expect(error?.message == message, "\(field)")
        }
        let ids = problem(#"{"model":"m","prompt":[[1],[2,-3]]}"#, .completions)
        #expect(ids?.param == "prompt" && ids?.message == "prompt_token_ids must be a non-empty list of non-negative integers")
        let part = problem(#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#, .chat)
        #expect(part?.param == "messages" && part?.message == "messages[0].content must be a string or a list of text parts")
    }

    /// Every message of the shared table names its field first, which is how the gateway finds `param`.
    @Test func everyRuleMessageNamesItsField() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../spec/requests.json")
        let table = try JSON.parse(Array(try Data(contentsOf: url)))
        let cases = try #require(table["invalid"]?.array)
        #expect(cases.count > 20)
        let fields: Set = ["custom_id", "prompt", "prompt_token_ids", "messages", "max_tokens", "temperature", "top_p", "stop", "seed",
                           "ignore_eos", "logprobs", "prompt_logprobs", "continuations"]
        // The gateway always builds an object with a custom_id: only the other messages reach it.
        for c in cases where c["request"]?["custom_id"]?.string?.isEmpty == false {
            let message = try #require(c["error"]?.string)
            if let field = RequestRules.field(of: RequestRules.Problem(customID: "a", message: message)) {
                #expect(fields.contains(field) && c["request"]?[field] != nil, "\(message): names \(field)")
            } else {
                #expect(message.hasPrefix("give "), "\(message)")
            }
        }
    }

    @Test func anEngineThatLeavesOutLogprobsCannotScore() throws {
        let call = try parse(#"{"model":"m","prompt":["a b","c"],"max_tokens":1,"echo":true,"logprobs":1}"#, .completions)
        let plain = InferenceResult(customID: "g1", text: "b", promptTokens: 2, completionTokens: 1, finishReason: "length")
        guard case .failure(let failure) = call.check(plain, 0) else { Issue.record("no logprobs passed"); return }
        #expect(failure.code == "unsupported" && failure.message.contains("pool 'm'"))
        #expect(APIError.from(failure).status == .badRequest)
        var scored = plain
        scored.promptLogprobs = TokenLogprobs(tokenIDs: [1, 2], tokens: ["a", "b"], tokenLogprobs: [nil, -1], topLogprobs: [nil, []])
        scored.logprobs = TokenLogprobs(tokenIDs: [2], tokens: ["b"], tokenLogprobs: [-0.125], topLogprobs: [[]])
        #expect(try call.check(scored, 0).get() == scored)
    }

    @Test func compassCodesMapToHTTPStatuses() {
        func status(_ code: String) -> Int { APIError.from(CompassFailure(code: code, message: "m")).status.code }
        #expect(status("busy") == 429)
        #expect(status("unknown_pool") == 404)
        #expect(status("bad_request") == 400)
        #expect(status("too_large") == 400)
        #expect(status("timeout") == 504)
        #expect(status(CompassFailure.deadlineCode) == 504)
        #expect(status(CompassFailure.noWorkersCode) == 503)
        #expect(status("unsupported") == 400)
        #expect(status("engine_dead") == 500)
    }

    @Test func multipartUpload() throws {
        let body = Array("--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{\"a\":1}\n\r\n--XyZ--\r\n".utf8)
        #expect(Multipart.boundary("multipart/form-data; boundary=XyZ") == "XyZ")
        #expect(Multipart.boundary("multipart/form-data; boundary=\"XyZ\"") == "XyZ")
        #expect(Multipart.boundary("application/json") == nil)
        let parts = try Multipart.parse(body, boundary: "XyZ")
        #expect(parts.map(\.name) == ["purpose", "file"])
        #expect(String(decoding: parts[0].body, as: UTF8.self) == "batch")
        #expect(parts[1].filename == "in.jsonl")
        #expect(String(decoding: parts[1].body, as: UTF8.self) == "{\"a\":1}\n")
        #expect(throws: APIError.self) { try Multipart.parse(Array("--XyZ\r\nno end".utf8), boundary: "XyZ") }
    }

    @Test func jsonRoundTripKeepsKeyOrderAndEscapes() throws {
        let value: JSON = .object([("b", 1), ("a", .string("q\"\\\n\u{1}é")), ("c", .array([.null, true, .double(1.5)]))])
        #expect(value.text == #"{"b":1,"a":"q\"\\\n\u0001é","c":[null,true,1.5]}"#)
        #expect(try JSON.parse(value.bytes)["a"] == .string("q\"\\\n\u{1}é"))
        #expect(try JSON.parse(Array("16.0".utf8)).int == 16)
    }
}
