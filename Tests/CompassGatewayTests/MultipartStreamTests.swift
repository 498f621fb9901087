@testable import CompassGateway
import Foundation
import Testing

/// The upload's multipart reader, fed in pieces as a socket would: it must find the same parts as
/// the whole-body parser wherever the chunks are cut, and keep only a boundary's worth buffered.
@Suite("multipart bodies read as they arrive")
struct MultipartStreamTests {
    final class Collect: MultipartStream.Sink {
        var bytes: [UInt8] = []
        func write(_ chunk: ArraySlice<UInt8>) throws { bytes += chunk }
    }

    /// The parts (name, filename, content) `body` yields when fed `chunk` bytes at a time.
    func parts(_ body: [UInt8], chunk: Int) throws -> [(String, String?, String)] {
        var out: [(String, String?, String)] = []
        var parser = MultipartStream(boundary: "XyZ", open: { _ in Collect() }, close: { head, sink in
            out.append((head.name ?? "", head.filename, String(decoding: (sink as! Collect).bytes, as: UTF8.self)))
        })
        var i = 0
        while i < body.count {
            try parser.feed(body[i..<min(body.count, i + chunk)])
            i += chunk
        }
        try parser.finish()
        return out
    }

    let body = Array(("preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\n"
        + "Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        + "{\"a\":1}\r\n--Xy not yet\r\n-\n\r\n--XyZ--\r\nepilogue").utf8)

    @Test func everyChunkSizeFindsTheSamePartsAsTheWholeBodyParser() throws {
        let whole = try Multipart.parse(body, boundary: "XyZ").map { ($0.name, $0.filename, String(decoding: $0.body, as: UTF8.self)) }
        #expect(whole.count == 2)
        for chunk in 1...body.count {
            let got = try parts(body, chunk: chunk)
            #expect(got.map(\.0) == whole.map(\.0) && got.map(\.1) == whole.map(\.1) && got.map(\.2) == whole.map(\.2), "chunk \(chunk)")
        }
    }

    @Test func truncatedOrBoundlessBodiesAreRefused() {
        for cut in [0, 5, 30, 60, body.count - 20] {
            #expect(throws: APIError.self, "cut at \(cut)") { _ = try parts(Array(body[..<cut]), chunk: 7) }
        }
        #expect(throws: APIError.self) { _ = try parts(Array("--XyZ\r\nno end".utf8), chunk: 3) }
        // Headers that never end are refused once past the limit, not buffered forever.
        var parser = MultipartStream(boundary: "XyZ", open: { _ in nil }, close: { _, _ in })
        #expect(throws: APIError.self) {
            try parser.feed(Array("--XyZ\r\nX-Long: ".utf8))
            for _ in 0..<100 { try parser.feed([UInt8](repeating: 0x61, count: 1024)) }
        }
    }

    @Test func aLargePartStreamsThroughWithASmallBuffer() throws {
        let big = [UInt8](repeating: UInt8(ascii: "z"), count: 3 << 20)
        let sink = Collect()
        var peak = 0
        var parser = MultipartStream(boundary: "XyZ", open: { $0.name == "file" ? sink : nil }, close: { _, _ in })
        let head = Array("--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".utf8)
        try parser.feed(head)
        var i = 0
        while i < big.count {
            try parser.feed(big[i..<min(big.count, i + 65536)])
            i += 65536
            peak = max(peak, i - sink.bytes.count)  // what the parser holds back
        }
        try parser.feed(Array("\r\n--XyZ--\r\n".utf8))
        try parser.finish()
        #expect(sink.bytes.count == big.count)
        #expect(peak < 16)
    }
}
