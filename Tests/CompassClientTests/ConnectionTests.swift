import CompassProtocol
import Testing
@testable import CompassClient

@Suite("Client state machine: heartbeats, reconnects, broker restarts, handshakes")
struct ConnectionTests {
    @Test func heartbeatsAfterAnIntervalOfSilenceFromUs() {
        var h = Harness()
        #expect(h.advance(99).heartbeats == 0)
        #expect(h.advance(1).heartbeats == 1, "100 ms since HELLO")
        h.reply(.heartbeat(brokerID: "b"))
        #expect(h.advance(50).heartbeats == 0)
        h.submit("a") // anything sent counts
        #expect(h.advance(99).heartbeats == 0)
        #expect(h.advance(1).heartbeats == 1)
    }

    @Test func aSilentBrokerMeansANewSocketHelloAndEveryAwaitedBatchAgain() {
        var h = Harness()
        h.submit("a")
        h.submit("b")
        h.reply(.accepted(batchID: "a"))
        h.submit("waiting")
        h.rejected("waiting", .busy, retryAfter: 5_000) // its timer sends it, not the reconnect
        let (asked, _) = h.status(timeout: 10_000)
        #expect(h.advance(300).reconnects == 0, "300 ms of silence is within 100 ms × 3")
        let lost = h.advance(1)
        #expect(lost.reconnects == 1)
        #expect(lost.wire.first == "HELLO")
        #expect(Set(lost.submits) == ["a", "b"])
        #expect(lost.statusRequests == 1, "the STATUS request went out on the old socket")
        #expect(h.machine.outstanding["a"]?.accepted == false)
        #expect(h.answers[asked] == nil)
        // The HELLO restarts the count: no second reconnect at once.
        #expect(h.advance(299).reconnects == 0)
    }

    @Test func aFailedReconnectTriesAgainAfterAnotherLivenessPeriod() {
        var h = Harness()
        h.submit("a")
        h.reconnectFails = true
        let failed = h.advance(301)
        #expect(failed.reconnects == 1 && failed.submits.isEmpty && failed.hellos == 0)
        #expect(h.advance(300).reconnects == 0)
        h.reconnectFails = false
        let again = h.advance(1)
        #expect(again.reconnects == 1 && again.submits == ["a"])
    }

    @Test func anotherBrokerProcessMeansHelloAndEveryAwaitedBatchAgain() {
        var h = Harness()
        let first = h.reply(.welcome(brokerID: "b1", maxPayloadBytes: nil))
        #expect(first.sent.isEmpty, "the first broker heard of is not a restart")
        h.submit("a")
        h.reply(.accepted(batchID: "a"))
        #expect(h.reply(.heartbeat(brokerID: "b1")).sent.isEmpty)
        let restarted = h.reply(.heartbeat(brokerID: "b2"))
        #expect(restarted.wire == ["HELLO", "SUBMIT a"])
        #expect(h.machine.brokerID == "b2" && h.machine.outstanding["a"]?.accepted == false)
        #expect(h.reply(.welcome(brokerID: "b2", maxPayloadBytes: nil)).sent.isEmpty)
        h.result("a")
        #expect(h.reply(.heartbeat(brokerID: "b3")).wire == ["HELLO"], "nothing awaited, nothing re-sent")
    }

    @Test func anUnreadableMessageStillShowsTheBrokerIsThere() {
        var h = Harness()
        h.advance(250)
        #expect(h.reply(.unreadable).isEmpty)
        #expect(h.advance(250).reconnects == 0)
        #expect(h.advance(51).reconnects == 1)
    }

    @Test func aRefusedKeyFailsEverythingWaitingAndEverySubmitUntilAHandshakeSucceeds() {
        var h = Harness()
        let (a, _) = h.submit("a")
        let (s, _) = h.status()
        let refused = h.step { m, t in m.handshake(.authenticationFailed(status: 400), now: t) }
        #expect(Set(refused.failures.map(\.caller)) == [a, s])
        guard case .unauthorized(let why)? = refused.failures.first?.error else { Issue.record("\(refused)"); return }
        #expect(why.contains("ZAP status 400") && why.contains("allowlist"))
        let (b, later) = h.submit("b")
        #expect(later.submits.isEmpty && later.failures.map(\.caller) == [b])
        #expect(h.status().actions.failures.count == 1)
        h.step { m, t in m.handshake(.succeeded, now: t) }
        #expect(h.machine.refused == nil)
        #expect(h.submit("c").actions.submits == ["c"])
    }

    @Test func threeFailedHandshakesInARowAreARefusalAndASuccessResetsTheCount() {
        var h = Harness()
        let (a, _) = h.submit("a")
        #expect(h.step { m, t in m.handshake(.failed(errno: 71), now: t) }.isEmpty)
        #expect(h.step { m, t in m.handshake(.failed(errno: 71), now: t) }.isEmpty)
        h.step { m, t in m.handshake(.succeeded, now: t) }
        #expect(h.step { m, t in m.handshake(.failed(errno: 71), now: t) }.isEmpty)
        #expect(h.step { m, t in m.handshake(.failed(errno: 71), now: t) }.isEmpty)
        let third = h.step { m, t in m.handshake(.failed(errno: 71), now: t) }
        #expect(third.failures.map(\.caller) == [a])
        guard case .unauthorized(let why)? = third.failures.first?.error else { Issue.record("\(third)"); return }
        #expect(why.contains("errno 71") && why.contains("probably requires CURVE"))
    }
}
