import CompassProtocol
import Testing
@testable import CompassScheduler

/// Sessions and split halves are typed inside the scheduler; their text (journal, STATUS, logs,
/// batch ids workers see) is what it was when they were keyed by strings.
@Suite("Typed identities and their text")
struct IdentityTests {
    /// A routing id as libzmq makes them: a zero byte and a 32-bit number.
    let zmqRoute = PeerID([0x00, 0x80, 0x00, 0x00, 0x29])

    @Test func sessionsReadAsTheyAlwaysWere() {
        #expect(SessionKey.named("sess").description == "sess")
        #expect(SessionKey.anonymous(PeerID("prod")).description == "anon:prod")
        #expect(SessionKey.anonymous(zmqRoute).description == "anon:0x0080000029")
    }

    @Test(arguments: ["sess", "", "anon", "anon:prod", "anon:0x0080000029", "anon:0x41", "anon:0x", "anon:0xabc", "anon:0xZZ", "Anon:x"])
    func textRoundTrips(text: String) {
        #expect(SessionKey(text).description == text)
    }

    @Test func theAnonymousFormNamesThatConnectionsSession() {
        #expect(SessionKey("sess") == .named("sess"))
        #expect(SessionKey("anon:prod") == .anonymous(PeerID("prod")))
        #expect(SessionKey("anon:0x0080000029") == .anonymous(zmqRoute))
        #expect(SessionKey("anon:0x0080000029").isAnonymous && !SessionKey("sess").isAnonymous)
        // Hex whose bytes are printable is not how such an id is shown: it is the text itself.
        #expect(SessionKey("anon:0x41") == .anonymous(PeerID("0x41")))
    }

    @Test func routingIdsParseFromTheirDescription() {
        for route in [zmqRoute, PeerID("prod"), PeerID([0xff]), PeerID([0x41, 0x00]), PeerID("0xzz"), PeerID("0x")] {
            #expect(PeerID(description: route.description) == route, "\(route)")
        }
        #expect(PeerID(description: "0x0A") == PeerID("0x0A"), "upper-case hex is not a description of bytes")
        #expect(PeerID(description: "0x008") == PeerID("0x008"))
    }

    @Test func halvesAreNamedForWorkersAsBefore() {
        #expect(SplitHalf(parent: "b", index: 0).batchID == "b~0")
        #expect(SplitHalf(parent: "b~1", index: 0).batchID == "b~1~0")
    }

    @Test("A batch a libzmq connection submitted without HELLO, restored from a journal, is adopted by that connection's HELLO")
    func restoredAnonymousSessionIsAdopted() {
        var h = Harness { $0.journaling = true }
        h.scheduler.restore([BatchSnapshot(id: "b", session: SessionKey("anon:0x0080000029"), pool: "p", meta: BatchMeta(requestCount: 1),
                                           maxAttempts: 3, payload: [1], outcome: .result(stats: [0], payload: [7]))], now: h.now)
        let out = h.record(h.scheduler.hello(from: zmqRoute, session: "named", now: h.now))
        #expect(out.results.map(\.id) == ["b"])
        #expect(out.contains { if case .journal(.rebound("b", .named("named"))) = $0 { true } else { false } })
        #expect(h.scheduler.snapshot(now: h.now).sessions.map(\.session) == ["named"])
    }

    @Test("A HELLO naming another connection's anonymous session is refused bad_frame and takes nothing from it")
    func helloInTheAnonymousFormIsRefused() {
        var h = Harness()
        h.ready("w")
        h.submit("b", from: "victim") // no HELLO: the session `anon:victim`
        h.scheduler.producerUnreachable(PeerID("victim")) // its connection is gone: the result will wait
        #expect(h.result("w", "b").results.isEmpty)
        for text in ["anon:victim", "anon:", "anon:0x0080000029"] {
            let out = h.record(h.scheduler.hello(from: PeerID("thief"), session: text, now: h.now))
            #expect(out.rejections.map(\.code) == [.badFrame], "\(text)")
            #expect(out.results.isEmpty, "\(text)")
            #expect(out.count == 1, "\(text): nothing but the refusal")
            guard case .toProducer(_, .rejected(_, _, let message, _)) = out.first else { continue }
            #expect(message.contains("session") && message.contains("reserved"), "\(message)")
        }
        #expect(h.scheduler.snapshot(now: h.now).sessions.map(\.session) == ["anon:victim"])
        // The thief's connection is not bound to the session: its re-SUBMIT of the id is another session's.
        #expect(h.submit("b", from: "thief").rejections.map(\.code) == [.duplicate])
        // The connection whose session it is still collects its result.
        #expect(h.submit("b", from: "victim").results.map(\.id) == ["b"])
    }

    @Test("A session restored from a journal in the anonymous form still serves its connection without a HELLO")
    func restoredAnonymousSessionServesItsConnection() {
        var h = Harness { $0.journaling = true }
        h.scheduler.restore([BatchSnapshot(id: "b", session: SessionKey("anon:0x0080000029"), pool: "p", meta: BatchMeta(requestCount: 1),
                                           maxAttempts: 3, payload: [1], outcome: .result(stats: [0], payload: [7]))], now: h.now)
        let out = h.record(h.scheduler.submit(from: zmqRoute, batchID: "b", pool: "p", meta: BatchMeta(requestCount: 1), payload: [1], now: h.now))
        #expect(out.accepted == ["b"] && out.results.map(\.id) == ["b"])
        h.record(h.scheduler.ack(from: zmqRoute, batchID: "b", now: h.now))
        #expect(h.scheduler.batchCount == 0)
    }
}
