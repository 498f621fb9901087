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

    @Test func unsupportedAndMalformedFieldsAre400WithTheParameter() {
        let cases: [(String, Endpoint, String)] = [
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#, .chat, "n"),
            (#"{"model":"m","prompt":[1,2]}"#, .completions, "prompt"),
            (#"{"model":"m","prompt":"x","logprobs":1}"#, .completions, "logprobs"),
            (#"{"prompt":"x"}"#, .completions, "model"),
            (#"{"model":"m"}"#, .completions, "prompt"),
            (#"{"model":"m","messages":[{"content":"x"}]}"#, .chat, "messages"),
            (#"{"model":"m","prompt":"x","stop":[1]}"#, .completions, "stop"),
            (#"{"model":"m","prompt":"x","temperature":"hot"}"#, .completions, "temperature"),
            (#"{"model":"m","prompt":"x","max_tokens":-1}"#, .completions, "max_tokens"),
        ]
        for (body, endpoint, param) in cases {
            let error = problem(body, endpoint)
            #expect(error?.status == .badRequest, "\(body)")
            #expect(error?.param == param, "\(body)")
        }
        #expect(problem("[1]", .chat)?.status == .badRequest)
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
