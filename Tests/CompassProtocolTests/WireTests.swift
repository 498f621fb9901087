import CompassProtocol
import CompassWire
import Testing
import ZMQ

@Suite("Wire protocol v1")
struct WireTests {
    @Test func headerIsSignaturePlusVersion() {
        #expect(WireProtocol.header == Array("compass".utf8) + [1])
    }

    @Test func submitRoundTrips() throws {
        let meta = BatchMeta(requestCount: 16, maxAttempts: 3, priority: -2, deadlineMilliseconds: 60_000)
        let frames = ProducerRequest.submit(batchID: "b-1", pool: "default", meta: meta, payload: Frame(string: "[]")).encode()
        #expect(frames.count == 6)
        guard case .submit(let id, let pool, let m, let payload) = try ProducerRequest.decode(frames[...]) else {
            Issue.record("not a submit"); return
        }
        #expect(id == "b-1")
        #expect(pool == "default")
        #expect(m == meta)
        #expect(payload.string == "[]")
    }

    @Test func metaLayoutIsBigEndian() {
        let meta = BatchMeta(requestCount: 0x0102_0304, maxAttempts: 5, priority: -1, deadlineMilliseconds: 7, flags: 0)
        #expect(meta.bytes == [1, 2, 3, 4, 0, 5, 0xff, 0xff, 0, 0, 0, 7, 0, 0, 0, 0])
        #expect(meta.bytes.withUnsafeBytes { BatchMeta(bytes: $0) } == meta)
    }

    @Test func everyWorkerMessageRoundTrips() throws {
        let messages: [WorkerMessage] = [
            .ready(capabilities: Frame(string: "{}")), .credit(4),
            .progress(batchID: "b", attempt: 2, done: 3, total: 4),
            .result(batchID: "b", attempt: 2, stats: Frame(string: "{}"), payload: Frame(string: "[]")),
            .failed(batchID: "b", attempt: 1, code: "oom", retryable: true, message: "out of memory", partial: Frame(bytes: [UInt8]())),
            .heartbeat(stats: Frame(bytes: [UInt8]())), .bye(reason: "SIGTERM"),
        ]
        for message in messages {
            let decoded = try WorkerMessage.decode(message.encode()[...])
            #expect(decoded.encode().map(\.bytes) == message.encode().map(\.bytes))
        }
    }

    @Test func everyBrokerReplyRoundTrips() throws {
        let replies: [ProducerReply] = [
            .welcome(session: "s", info: Frame(string: "{}")), .accepted(batchID: "b"),
            .rejected(batchID: "", code: "bad_frame", message: "why", retryAfterMilliseconds: 5),
            .progress(batchID: "b", done: 1, total: 2),
            .result(batchID: "b", attempts: 1, stats: Frame(string: "{}"), payload: Frame(string: "[]")),
            .failed(batchID: "b", attempts: 3, code: "worker_lost", message: "gone", partial: Frame(bytes: [UInt8]())),
            .status(json: Frame(string: "{}")), .heartbeat(brokerID: "b1"),
        ]
        for reply in replies {
            #expect(try ProducerReply.decode(reply.encode()[...]).encode().map(\.bytes) == reply.encode().map(\.bytes))
        }
        let toWorker: [BrokerWorkerMessage] = [
            .welcome(settings: Frame(string: "{}")), .batch(batchID: "b", attempt: 1, meta: BatchMeta(), payload: Frame(string: "[]")),
            .cancel(batchID: "b", attempt: 1), .heartbeat, .disconnect(reason: "unknown"),
        ]
        for message in toWorker {
            #expect(try BrokerWorkerMessage.decode(message.encode()[...]).encode().map(\.bytes) == message.encode().map(\.bytes))
        }
    }

    func rejection(_ frames: [Frame]) -> RejectCode? {
        do {
            _ = try ProducerRequest.decode(frames[...])
            return nil
        } catch {
            return error.code
        }
    }

    @Test func badInputIsClassified() {
        let header = WireProtocol.headerFrame()
        #expect(rejection([]) == .badFrame)
        #expect(rejection([Frame(string: "garbage")]) == .badFrame)
        #expect(rejection([Frame(bytes: Array("compass".utf8) + [9]), Field.u8(2)]) == .badVersion)
        #expect(rejection([header]) == .badFrame)
        #expect(rejection([header, Field.u8(0x7f)]) == .unknownCommand)
        #expect(rejection([header, Frame(bytes: [1, 2])]) == .badFrame)
        #expect(rejection([header, Field.u8(2), Frame(string: "b")]) == .badFrame) // SUBMIT missing frames
        #expect(rejection([header, Field.u8(2), Frame(string: "b"), Frame(string: "p"), Frame(bytes: [1]), Frame(string: "[]")]) == .badFrame)
        #expect(rejection([header, Field.u8(2), Frame(bytes: [UInt8]()), Frame(string: "p"), BatchMeta().frame, Frame(string: "[]")]) == .badFrame)
        #expect(rejection([header, Field.u8(2), Frame(bytes: [0xff, 0xfe]), Frame(string: "p"), BatchMeta().frame, Frame(string: "[]")]) == .badFrame)
        #expect(rejection([header, Field.u8(1), Frame(bytes: [UInt8](repeating: 65, count: 500))]) == .badFrame)
    }

    @Test func poolNames() {
        #expect(WireProtocol.isValidPoolName("llama-70b_v2.1"))
        #expect(!WireProtocol.isValidPoolName(""))
        #expect(!WireProtocol.isValidPoolName("a b"))
        #expect(!WireProtocol.isValidPoolName(String(repeating: "a", count: 65)))
    }
}
