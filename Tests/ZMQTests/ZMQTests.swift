import Testing
import ZMQ

#if canImport(Glibc)
import Glibc
#endif

@Suite("ZMQ wrapper", .timeLimit(.minutes(1)))
struct ZMQTests {
    let context = try! ZMQContext()

    /// A ROUTER bound on a wildcard port and a DEALER connected to it, both with receive timeouts.
    func pair() throws -> (router: ZMQSocket, dealer: ZMQSocket) {
        let router = try context.socket(.router)
        try router.set([.receiveTimeout(milliseconds: 5000), .routerMandatory(true)])
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try context.socket(.dealer)
        try dealer.set([.receiveTimeout(milliseconds: 5000), .routingID(Array("d1".utf8))])
        try dealer.connect(try router.lastEndpoint)
        return (router, dealer)
    }

    @Test func wildcardPortIsResolved() throws {
        let (router, _) = try pair()
        let endpoint = try router.lastEndpoint
        #expect(endpoint.hasPrefix("tcp://127.0.0.1:"))
        #expect(!endpoint.hasSuffix(":*"))
    }

    @Test func multipartRoundTripCarriesTheRoutingID() throws {
        let (router, dealer) = try pair()
        try dealer.send([Frame(string: "hello"), Frame(bytes: [1, 2, 3]), Frame(bytes: [UInt8]())])
        let got = try #require(try router.receive())
        #expect(got.map(\.bytes) == [Array("d1".utf8), Array("hello".utf8), [1, 2, 3], []])
        try router.send([got[0], Frame(string: "back")])
        let reply = try #require(try dealer.receive())
        #expect(reply.map(\.string) == ["back"])
    }

    @Test func aFrameSentTwiceStaysValid() throws {
        let (router, dealer) = try pair()
        let big = Frame(bytes: [UInt8](repeating: 7, count: 100_000))
        try dealer.send([big])
        try dealer.send([big])
        #expect(big.count == 100_000)
        for _ in 0..<2 {
            let got = try #require(try router.receive())
            #expect(got[1].count == 100_000)
            #expect(got[1].withUnsafeBytes { $0.allSatisfy { $0 == 7 } })
        }
        let shared = Frame(sharing: big)
        #expect(shared.bytes == big.bytes)
    }

    @Test func aMessageWrittenToTheSocketArrivesFrameByFrame() throws {
        let (router, dealer) = try pair()
        let big = Frame(bytes: [UInt8](repeating: 9, count: 100_000))
        try dealer.send { m in
            m.append(string: "hello")
            m.append(u32: 0x0102_0304)
            m.append(bytes: [UInt8]())
            m.append(frame: big, last: false)
            m.append(u8: 5, last: true)
        }
        let got = try #require(try router.receive())
        #expect(got.map(\.count) == [2, 5, 4, 0, 100_000, 1])
        #expect(got[2].bytes == [1, 2, 3, 4])
        #expect(got[5].bytes == [5])
        #expect(big.count == 100_000) // still valid after the send
        // The same frames, collected instead of sent.
        var list = FrameList()
        list.append(string: "back", last: false)
        list.append(frame: big, last: true)
        try router.send(dontWait: true) { m in
            m.append(bytes: got[0].bytes)
            for (i, frame) in list.frames.enumerated() { m.append(frame: frame, last: i == list.frames.count - 1) }
        }
        let reply = try #require(try dealer.receive())
        #expect(reply.map(\.count) == [4, 100_000])
    }

    @Test func aWrittenMessageToAnUnknownPeerFails() throws {
        let (router, _) = try pair()
        #expect(throws: ZMQError.self) {
            try router.send(dontWait: true) { m in
                m.append(string: "nobody")
                m.append(string: "x", last: true)
            }
        }
        let lonely = try context.socket(.dealer)
        #expect(try lonely.send(dontWait: true) { m in m.append(string: "x", last: true) } == false)
    }

    @Test func nonBlockingReceiveReturnsNilWhenEmpty() throws {
        let (router, _) = try pair()
        #expect(try router.receive(dontWait: true) == nil)
    }

    @Test func receiveTimeoutThrowsWouldBlock() throws {
        let socket = try context.socket(.dealer)
        try socket.set(.receiveTimeout(milliseconds: 20))
        try socket.connect("tcp://127.0.0.1:1")
        do {
            _ = try socket.receive()
            Issue.record("expected a timeout")
        } catch let error as ZMQError {
            #expect(error.isWouldBlock)
        }
    }

    @Test func routerMandatoryReportsUnknownPeer() throws {
        let (router, _) = try pair()
        do {
            try router.send([Frame(string: "nobody"), Frame(string: "x")], dontWait: true)
            Issue.record("expected EHOSTUNREACH")
        } catch let error as ZMQError {
            #expect(error.isHostUnreachable)
            #expect(error.call == "zmq_msg_send")
        }
    }

    @Test func bindErrorNamesTheCallAndEndpoint() throws {
        let socket = try context.socket(.router)
        do {
            try socket.bind("bogus://nowhere")
            Issue.record("expected an error")
        } catch let error as ZMQError {
            #expect(error.call == "zmq_bind")
            #expect(error.description.contains("bogus://nowhere"))
        }
    }

    @Test func oversizedMessageIsNotDelivered() throws {
        let router = try context.socket(.router)
        try router.set([.maxMessageSize(1000), .receiveTimeout(milliseconds: 300)])
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try context.socket(.dealer)
        try dealer.connect(try router.lastEndpoint)
        try dealer.send([Frame(bytes: [UInt8](repeating: 0, count: 5000))])
        #expect(throws: ZMQError.self) { _ = try router.receive() }
    }

    @Test func receiveBufferReusesFramesNothingKept() throws {
        let (router, dealer) = try pair()
        try dealer.send([Frame(string: "one"), Frame(bytes: [1, 2, 3])])
        try dealer.send([Frame(string: "two"), Frame(bytes: [4, 5])])
        var buffer = ReceiveBuffer(spareLimit: 8)
        #expect(try router.receive(into: &buffer, maxFrames: 10, maxBytes: { _ in .max }) == .message)
        #expect(buffer.frames.map(\.bytes) == [Array("d1".utf8), Array("one".utf8), [1, 2, 3]])
        let first = ObjectIdentifier(buffer.frames[1])
        buffer.recycle()
        #expect(buffer.frames.isEmpty && buffer.spareCount == 3)
        #expect(try router.receive(into: &buffer, maxFrames: 10, maxBytes: { _ in .max }) == .message)
        #expect(buffer.spareCount == 0)
        #expect(buffer.frames.map(\.bytes) == [Array("d1".utf8), Array("two".utf8), [4, 5]])
        #expect(buffer.frames.contains { ObjectIdentifier($0) == first })
    }

    @Test func receiveBufferNeverReusesAFrameTheCallerKept() throws {
        let (router, dealer) = try pair()
        let payload = [UInt8](repeating: 7, count: 3000)
        try dealer.send([Frame(string: "keep"), Frame(bytes: payload)])
        try dealer.send([Frame(string: "next"), Frame(bytes: [9])])
        var buffer = ReceiveBuffer(spareLimit: 8)
        _ = try router.receive(into: &buffer, maxFrames: 10, maxBytes: { _ in .max })
        let kept = buffer.frames[2]
        // Receiving the next message recycles this one's frames, except the one kept.
        _ = try router.receive(into: &buffer, maxFrames: 10, maxBytes: { _ in .max })
        #expect(buffer.frames.map(\.bytes) == [Array("d1".utf8), Array("next".utf8), [9]])
        #expect(!buffer.frames.contains { $0 === kept })
        #expect(kept.bytes == payload)
        buffer.recycle()
        #expect(buffer.spareCount == 3) // the 2 reused ones plus 1 new, not the kept frame
        #expect(kept.bytes == payload)
    }

    @Test func receiveBufferKeepsAtMostItsLimitAndEmptiesWhatItKeeps() throws {
        let (router, dealer) = try pair()
        try dealer.send((0..<6).map { Frame(bytes: [UInt8](repeating: UInt8($0), count: 100)) })
        var buffer = ReceiveBuffer(spareLimit: 4)
        #expect(try router.receive(into: &buffer, maxFrames: 10, maxBytes: { _ in .max }) == .message)
        #expect(buffer.frames.count == 7)
        buffer.recycle()
        #expect(buffer.spareCount == 4)
        try dealer.send([Frame(string: "x")])
        #expect(try router.receive(into: &buffer, maxFrames: 10, maxBytes: { _ in .max }) == .message)
        #expect(buffer.frames.map(\.bytes) == [Array("d1".utf8), Array("x".utf8)])
    }

    @Test func receiveBufferHoldsTheHeadOfAnOversizedMessage() throws {
        let (router, dealer) = try pair()
        try dealer.send((0..<8).map { Frame(string: "f\($0)") })
        try dealer.send([Frame(string: "after")])
        var buffer = ReceiveBuffer(spareLimit: 8)
        #expect(try router.receive(into: &buffer, maxFrames: 4, maxBytes: { _ in .max }) == .oversized(frames: 9, bytes: 2 + 8 * 2))
        #expect(buffer.frames.map(\.string) == ["d1", "f0", "f1"])
        #expect(try router.receive(into: &buffer, maxFrames: 4, maxBytes: { _ in .max }) == .message)
        #expect(buffer.frames.map(\.string) == ["d1", "after"])
    }

    @Test func pollerSeesSocketsAndFileDescriptors() throws {
        let (router, dealer) = try pair()
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let poller = ZMQPoller()
        let r = poller.add(router)
        let p = poller.add(fd: fds[0])
        #expect(try poller.poll(timeoutMilliseconds: 0) == 0)
        var byte: UInt8 = 1
        _ = write(fds[1], &byte, 1)
        try dealer.send([Frame(string: "x")])
        var seen = (socket: false, fd: false)
        let deadline = ContinuousClock.now + .seconds(10)
        while !(seen.socket && seen.fd) && ContinuousClock.now < deadline {
            try poller.poll(timeoutMilliseconds: 100)
            seen.socket = seen.socket || poller.isReadable(r)
            if poller.isReadable(p) {
                seen.fd = true
                _ = read(fds[0], &byte, 1) // level-triggered: drain it so the poll waits for the socket
            }
        }
        #expect(seen.socket && seen.fd)
    }

    @Test func curveKeysRoundTrip() throws {
        guard ZMQContext.has("curve") else { return }
        let pair = try CurveKeyPair.generate()
        #expect(pair.publicKey.count == 40)
        let derived = try CurveKeyPair(secretKey: pair.secretKey)
        #expect(derived.publicKey == pair.publicKey)
        let raw = try #require(CurveKey.decode(pair.publicKey))
        #expect(CurveKey.encode(raw) == pair.publicKey)
        #expect(CurveKey.decode("short") == nil)
    }
}
