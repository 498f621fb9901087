import CompassEngines
import CompassProtocol
import Testing
@testable import CompassWorker

@Suite("Worker state machine: registration, heartbeats, credit modes")
struct RegistrationTests {
    @Test func connectsOnceTheEngineIsReadyAndGrantsTheBatchWindow() {
        var h = Harness()
        let started = h.step { m, t in m.start(now: t) }
        #expect(started.engineStarts == 1 && started.connects == 0, "nothing connects before the engine can take work")
        let ready = h.ready()
        #expect(ready.connects == 1)
        #expect(ready.readies == [2], "one batch runs, one waits: the window workers always had")
        #expect(h.machine.outstanding == 2 && h.machine.creditMode == nil)
        let welcome = h.welcome(.explicit)
        #expect(welcome.events.contains(.registered(heartbeatMilliseconds: 100, creditMode: .explicit)))
        #expect(welcome.credits.isEmpty, "the window is granted already")
        #expect(h.machine.registered)
    }

    @Test func aBatchEngineGetsItsBatchesPlusOneAndCreditComesBackExplicitly() {
        var h = Harness()
        #expect(h.startReady(EngineCapacity(maxBatches: 2)).readies == [3])
        h.welcome()
        #expect(h.batch("a").submitted == ["a"])
        #expect(h.batch("b").submitted == ["b"])
        let c = h.batch("c")
        #expect(c.submitted.isEmpty && h.machine.held.count == 1, "two batches inside, the third waits")
        #expect(c.credits.isEmpty && h.machine.outstanding == 0)
        let done = h.finish("a")
        #expect(done.results == ["a"] && done.submitted == ["c"])
        #expect(done.credits == [1], "explicit credit: the worker grants the slot the result freed")
    }

    @Test func heartbeatsAndALostBrokerDropWhatIsHeldAndReconnectWithBackoff() {
        var h = Harness()
        h.brokerAlive = false
        h.startReady()
        h.welcome()
        h.batch("a")
        h.batch("b")
        #expect(h.machine.held.count == 1)
        #expect(h.advance(100).heartbeats == 1, "heartbeat after an interval of silence")
        h.advance(100)
        let lost = h.advance(150) // 350 ms since the broker was heard: over 100 × 3
        #expect(lost.disconnects == 1)
        #expect(lost.events.contains { if case .brokerLost(_, 100) = $0 { return true }; return false })
        #expect(h.machine.held.isEmpty && !h.machine.connected && h.machine.outstanding == 0)
        #expect(h.machine.running.map(\.batchID) == ["a"], "a running batch finishes and reports later")
        #expect(h.advance(50).connects == 0)
        let again = h.advance(60)
        #expect(again.connects == 1)
        #expect(again.readies == [1], "READY grants the window less what still runs")
        // The next loss waits twice as long.
        h.advance(350)
        #expect(h.machine.connected == false)
        #expect(h.advance(150).connects == 0)
        #expect(h.advance(60).connects == 1)
    }

    @Test func disconnectDropsHeldBatchesAndRegistersAgain() {
        var h = Harness()
        h.startReady()
        h.welcome()
        h.batch("a")
        h.batch("b")
        let actions = h.step { m, t in m.disconnected(reason: "unknown worker", now: t) }
        #expect(actions.readies == [1] && actions.connects == 0, "READY again on the same connection")
        #expect(h.machine.held.isEmpty && !h.machine.registered)
        // The running batch still reports; its credit counts once WELCOME says the mode.
        h.finish("a")
        h.welcome(.explicit)
        #expect(h.machine.outstanding == 2)
    }

    @Test func aStormOfDisconnectsRegistersOnce() {
        var h = Harness()
        h.startReady(EngineCapacity(sequences: 64))
        h.welcome()
        for i in 0..<40 { h.batch("b\(i)") }
        // The broker forgot the worker; each of its messages on the way is answered DISCONNECT.
        let first = h.step { m, t in m.disconnected(reason: "unknown worker", now: t) }
        #expect(first.readies.count == 1 && h.machine.held.isEmpty)
        for _ in 0..<50 {
            let echo = h.step { m, t in m.disconnected(reason: "unknown worker", now: t) }
            #expect(echo.readies.isEmpty && echo.events.isEmpty, "an echo of a message sent before READY is no news")
        }
        h.welcome()
        #expect(h.machine.registered)
        let again = h.step { m, t in m.disconnected(reason: "unknown worker", now: t) }
        #expect(again.readies.count == 1, "after WELCOME, a DISCONNECT means the broker forgot the worker again")
    }

    @Test func aReadyWithoutWelcomeIsSentAgainAfterTheLivenessTime() {
        var h = Harness()
        h.startReady()
        #expect(h.advance(300).readies.isEmpty)
        let again = h.advance(1)
        #expect(again.readies.count == 1)
        #expect(again.events.contains { if case .reregistering(let why) = $0 { return why.contains("no WELCOME") }; return false })
        #expect(h.machine.connected && !h.machine.registered)
    }

    @Test func anOlderBrokerReturnsCreditWithResults() {
        var h = Harness()
        h.startReady()
        h.batch("a")            // dispatched right after READY, before WELCOME is read
        h.finish("a")           // answered before WELCOME: an implicit broker returns its credit
        let welcome = h.welcome(nil)
        #expect(h.machine.creditMode == .implicit)
        #expect(h.machine.outstanding == 2, "READY's 2, minus the batch, plus the credit its result returned")
        #expect(welcome.credits.isEmpty)
        h.batch("b")
        let done = h.finish("b")
        #expect(done.credits.isEmpty && h.machine.outstanding == 2, "the result returned the credit by itself")
    }

    @Test func anOlderBrokerKeepsACapacityEngineToTheBatchWindowAndSaysSo() {
        var h = Harness()
        h.startReady(EngineCapacity(sequences: 64))
        let welcome = h.welcome(nil)
        #expect(welcome.events.contains(.implicitCredit(window: 2)))
        for i in 0..<2 { h.batch("b\(i)") }
        #expect(h.machine.outstanding == 0 && h.machine.running.count == 2)
        #expect(h.finish("b0").credits.isEmpty, "a window that cannot shrink is never grown past the batch window")
    }

    @Test func aRefusedHandshakeEndsTheWorkerWithStatus4() {
        var h = Harness()
        h.startReady()
        h.step { m, _ in m.handshakeRefused("the broker refused this worker's CURVE key") }
        #expect(h.machine.exitCode == 4)
    }
}
