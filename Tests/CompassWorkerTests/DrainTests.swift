import CompassEngines
import CompassProtocol
import Testing
@testable import CompassWorker

@Suite("Worker state machine: cancel, drain, hand-back")
struct DrainTests {
    @Test func cancelOfAHeldBatchAnswersAtOnceAndOfARunningOneAsksTheEngine() {
        var h = Harness()
        h.startReady()
        h.welcome()
        h.batch("a")
        h.batch("b")
        let held = h.step { m, t in m.cancel(batchID: "b", attempt: 1, now: t) }
        #expect(held.failures.map(\.id) == ["b"] && held.failures[0].code == .cancelled && !held.failures[0].retryable)
        #expect(held.credits == [1], "explicit credit: the slot is granted again")
        let running = h.step { m, t in m.cancel(batchID: "a", attempt: 1, now: t) }
        #expect(running.cancels == ["a"] && running.failures.isEmpty, "the engine answers a running batch")
        let stale = h.step { m, t in m.cancel(batchID: "a", attempt: 7, now: t) }
        #expect(stale.cancels.isEmpty, "another attempt of the batch is not ours")
        let answered = h.step { m, t in
            m.engineFailed(batchID: "a", attempt: 1, code: .cancelled, retryable: false, message: "cancelled", now: t)
        }
        #expect(answered.failures.map(\.code) == [.cancelled])
        #expect(h.machine.outstanding == 2)
    }

    @Test func sigtermSaysByeHandsBackWhatIsHeldAndFinishesWhatRuns() {
        var h = Harness()
        h.startReady(EngineCapacity(maxBatches: 2))
        h.welcome()
        for id in ["a", "b", "c"] { h.batch(id) }
        let drain = h.step { m, t in m.signal("SIGTERM", now: t) }
        #expect(drain.byes == 1)
        #expect(drain.failures.map(\.id) == ["c"] && drain.failures[0].code == .handedBack && drain.failures[0].retryable)
        #expect(drain.events.contains(.draining(signal: "SIGTERM", running: ["a", "b"], held: 1)))
        let late = h.batch("d")
        #expect(late.failures.map(\.code) == [.handedBack] && late.submitted.isEmpty, "nothing new starts while draining")
        #expect(h.finish("a").credits.isEmpty, "a draining worker asks for nothing")
        h.advance(10)
        #expect(h.machine.exitCode == nil)
        h.finish("b")
        h.advance(10)
        #expect(h.machine.exitCode == 0)
    }

    @Test func theDrainTimeHandsBackWhatStillRuns() {
        var h = Harness { $0.drainMilliseconds = 1_000 }
        h.startReady()
        h.welcome()
        h.batch("a")
        h.step { m, t in m.signal("SIGTERM", now: t) }
        #expect(h.advance(1_000).failures.isEmpty)
        let over = h.advance(1)
        #expect(over.cancels == ["a"])
        #expect(over.failures.map(\.code) == [.handedBack])
        #expect(h.machine.exitCode == 0)
    }

    @Test func aSecondSignalHandsBackAtOnce() {
        var h = Harness()
        h.startReady()
        h.welcome()
        h.batch("a")
        h.step { m, t in m.signal("SIGTERM", now: t) }
        let second = h.step { m, t in m.signal("SIGINT", now: t) }
        #expect(second.events.contains(.secondSignal("SIGINT")))
        #expect(second.failures.map(\.id) == ["a"] && second.cancels == ["a"])
        #expect(h.machine.exitCode == 0)
    }

    @Test func aDrainingWorkerDoesNotReconnect() {
        var h = Harness()
        h.startReady()
        h.welcome()
        h.batch("a")
        h.step { m, t in m.signal("SIGTERM", now: t) }
        h.brokerAlive = false
        h.advance(400) // the broker went silent: the connection is dropped
        #expect(!h.machine.connected)
        #expect(h.advance(1_000).connects == 0)
    }
}
