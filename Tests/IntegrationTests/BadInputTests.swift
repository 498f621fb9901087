import CompassProtocol
import CompassWire
import Foundation
import Testing
import ZMQ

@Suite("Bad input on the broker's sockets", .serialized, .timeLimit(.minutes(2)))
struct BadInputTests {
    /// A raw DEALER that sends frames and reads the broker's reply.
    final class RawPeer {
        let socket: ZMQSocket

        init(_ context: ZMQContext, _ endpoint: String) throws {
            socket = try context.socket(.dealer)
            try socket.set([.receiveTimeout(milliseconds: 5000), .linger(milliseconds: 0)])
            try socket.connect(endpoint)
        }

        func ask(_ frames: [Frame]) throws -> [Frame] {
            try socket.send(frames)
            guard let reply = try socket.receive() else { throw HarnessError("no reply") }
            return reply
        }

        /// Sends and expects a REJECTED; returns its code and message.
        func rejected(_ frames: [Frame]) throws -> (code: String, message: String) {
            let reply = try ProducerReply.decode(try ask(frames)[...])
            guard case .rejected(_, let code, let message, _) = reply else { throw HarnessError("expected REJECTED, got \(reply)") }
            return (code, message)
        }
    }

    @Test("garbage, wrong version, unknown command, unknown pool, invalid JSON, too large: REJECTED with a reason; the broker keeps serving")
    func frontendRejectsBadInput() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-payload-bytes", "4096"])
        let worker = try startWorker(broker.backend, in: dir, name: "worker")
        try await worker.waitForLog("registered with broker")
        let context = try ZMQContext()
        let peer = try RawPeer(context, broker.frontend)
        let header = WireProtocol.headerFrame()
        let submit = { (pool: String, payload: String) -> [Frame] in
            ProducerRequest.submit(batchID: "bad-1", pool: pool, meta: BatchMeta(), payload: Frame(string: payload)).encode()
        }
        #expect(try peer.rejected([Frame(string: "GET / HTTP/1.1")]).code == "bad_frame")
        let version = try peer.rejected([Frame(bytes: Array("compass".utf8) + [2]), Field.u8(2)])
        #expect(version.code == "bad_version")
        #expect(version.message.contains("version 1"))
        #expect(try peer.rejected([header, Field.u8(0x42)]).code == "unknown_command")
        #expect(try peer.rejected([header, Field.u8(2), Frame(string: "only-an-id")]).code == "bad_frame")
        let unknownPool = try peer.rejected(submit("nosuchpool", #"[{"custom_id":"a","prompt":"x"}]"#))
        #expect(unknownPool.code == "unknown_pool")
        #expect(unknownPool.message.contains("nosuchpool"))
        let badJSON = try peer.rejected(submit("default", #"[{"custom_id":"a","prompt":"x"}"#))
        #expect(badJSON.code == "bad_payload")
        #expect(try peer.rejected(submit("default", #"{"custom_id":"a"}"#)).code == "bad_payload")
        #expect(try peer.rejected(submit("default", "[]")).code == "bad_payload")
        let big = "[" + String(repeating: #"{"custom_id":"a","prompt":"x"},"#, count: 200) + #"{"custom_id":"z","prompt":"x"}]"#
        #expect(try peer.rejected(submit("default", big)).code == "too_large")
        // Every frame count from 0 to 8 after the header, random bytes: answered, never a crash.
        for count in 0...8 {
            var frames = [header]
            for i in 0..<count { frames.append(Frame(bytes: (0..<(i * 3 % 17)).map { UInt8(truncatingIfNeeded: $0 * 31 + count) })) }
            _ = try peer.ask(frames)
        }
        // Still serving: a good batch from a real client completes.
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let outcome = try await client.submit([InferenceRequest(customID: "ok", prompt: "still here")], pool: "default")
        #expect(try outcome.results().first?.text == "here still")
        #expect(broker.process.child.poll() == nil)
        #expect(broker.process.log().contains("rejected producer message"))
    }

    @Test("A message over ZMQ_MAXMSGSIZE drops only that connection")
    func oversizedMessageDropsTheConnection() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir, arguments: ["--max-payload-bytes", "1024"])
        let context = try ZMQContext()
        let flooder = try context.socket(.dealer)
        try flooder.set(.linger(milliseconds: 0))
        try flooder.connect(broker.frontend)
        // MAXMSGSIZE is payload limit + 1 MiB: this is over it.
        try flooder.send(ProducerRequest.submit(batchID: "huge", pool: "default", meta: BatchMeta(),
                                                payload: Frame(bytes: [UInt8](repeating: 0x20, count: 3 << 20))).encode())
        let worker = try startWorker(broker.backend, in: dir, name: "worker")
        try await worker.waitForLog("registered with broker")
        let client = try testClient(broker.frontend)
        defer { client.close() }
        let outcome = try await client.submit([InferenceRequest(customID: "ok", prompt: "after flood")], pool: "default")
        #expect(try outcome.results().first?.text == "flood after")
        #expect(try await status(client).scheduler.pools.first?.counters.submitted == 1)
    }

    @Test("Garbage on the backend gets DISCONNECT with the reason")
    func backendRejectsBadInput() async throws {
        let dir = TempDir()
        let broker = try await BrokerProcess(in: dir)
        let context = try ZMQContext()
        let peer = try RawPeer(context, broker.backend)
        let header = WireProtocol.headerFrame()
        func disconnectReason(_ frames: [Frame]) throws -> String {
            let reply = try BrokerWorkerMessage.decode(try peer.ask(frames)[...])
            guard case .disconnect(let reason) = reply else { throw HarnessError("expected DISCONNECT, got \(reply)") }
            return reason
        }
        #expect(try disconnectReason([Frame(string: "junk")]).contains("bad_frame"))
        #expect(try disconnectReason([header, Field.u8(0x11), Frame(string: "{not json")]).contains("READY"))
        #expect(try disconnectReason([header, Field.u8(0x11), Frame(string: #"{"pool":"bad pool","tp":1,"gpus":[],"model":"","engine":"x","max_batch":1,"credit":1,"pid":1,"host":"h","version":"0"}"#)]).contains("pool"))
        // A heartbeat from a worker the broker never met: told to register.
        #expect(try disconnectReason([header, Field.u8(0x16), Frame(bytes: [UInt8]())]).contains("register"))
    }
}
