import CompassEngines
import CompassProtocol
import Testing
@testable import CompassWorker

@Suite("Worker state machine: engine start, death, watchdog, restart")
struct EngineLifeTests {
    @Test func aDeadEngineFailsItsBatchesBackAndRestartsWithBackoff() {
        var h = Harness()
        h.startReady()
        h.welcome()
        h.batch("a")
        h.batch("b")
        let died = h.step { m, t in m.engineDied(code: .engineDead, message: "killed", now: t) }
        #expect(died.engineStops == 1)
        #expect(died.failures.map(\.id) == ["a"] && died.failures[0].code == .engineDead && died.failures[0].retryable)
        #expect(died.events.contains(.engineDied(code: .engineDead, message: "killed", restarts: 1)))
        #expect(h.machine.held.map(\.batchID) == ["b"], "a batch not started waits for the engine")
        #expect(h.advance(249).engineStarts == 0)
        #expect(h.advance(1).engineStarts == 1)
        #expect(h.ready().submitted == ["b"])
        // A start that fails right after waits twice as long; a good start resets the backoff.
        h.step { m, t in m.engineDied(code: .engineDead, message: "again", now: t) }
        #expect(h.advance(250).engineStarts == 1)
        h.step { m, t in m.engineStartFailed(reason: "spawn failed", now: t) }
        #expect(h.advance(250).engineStarts == 0)
        #expect(h.advance(250).engineStarts == 1)
        #expect(h.machine.restarts == 2)
    }

    @Test func theWatchdogKillsAnEngineThatStopsMakingProgress() {
        var h = Harness { $0.progressTimeoutMilliseconds = 600 }
        h.startReady()
        h.welcome()
        h.batch("a")
        h.advance(500)
        h.progress("a", done: 0, total: 1)   // proof of life, though nothing finished
        #expect(h.advance(500).engineStops == 0)
        let fired = h.advance(101)
        #expect(fired.events.contains { if case .watchdog("a", 601) = $0 { return true }; return false }, "\(fired.events)")
        #expect(fired.engineStops == 1)
        #expect(fired.failures.map(\.code) == [.timeout])
        #expect(h.machine.engine != .ready)
    }

    @Test func theWatchdogSleepsWhileTheEngineHasNothingToDo() {
        var h = Harness { $0.progressTimeoutMilliseconds = 600 }
        h.startReady()
        h.welcome()
        #expect(h.advance(5_000).engineStops == 0)
        h.batch("a")
        #expect(h.advance(600).engineStops == 0, "the clock starts when the engine gets work")
    }

    @Test func aStartThatTimesOutOrDiesIsCountedAndTheWorkerGivesUp() {
        var h = Harness { $0.startupTimeoutMilliseconds = 400; $0.maxStartFailures = 2 }
        h.step { m, t in m.start(now: t) }
        let late = h.advance(401)
        #expect(late.events.contains { if case .engineStartFailed(let reason, 1, 250) = $0 { return reason == "the engine was not ready within 400 ms" }; return false })
        #expect(late.engineStops == 1)
        #expect(h.advance(250).engineStarts == 1)
        let dead = h.step { m, t in m.engineDied(code: .startupFailed, message: "no such model", now: t) }
        #expect(dead.events.contains { if case .engineGaveUp(2, let why) = $0 { return why.contains("no such model") }; return false })
        #expect(h.machine.exitCode == 3)
        #expect(h.log.connects == 0, "a worker whose engine never started never registered")
    }

    @Test func aSuccessfulStartResetsTheCountOfFailures() {
        var h = Harness { $0.maxStartFailures = 2 }
        h.step { m, t in m.start(now: t) }
        h.step { m, t in m.engineStartFailed(reason: "spawn failed", now: t) }
        h.advance(250)
        h.ready()
        #expect(h.machine.startFailures == 0)
        h.step { m, t in m.engineDied(code: .engineDead, message: "crash", now: t) }
        #expect(h.machine.exitCode == nil, "a death after a good start is not a failed start")
    }

    @Test func lateEventsOfAStoppedEngineChangeNothing() {
        var h = Harness()
        h.startReady()
        h.welcome()
        h.batch("a")
        h.step { m, t in m.engineDied(code: .engineDead, message: "gone", now: t) }
        let late = h.finish("a")
        #expect(late.results.isEmpty, "the batch was failed back already")
        let again = h.step { m, t in m.engineDied(code: .engineDead, message: "gone twice", now: t) }
        #expect(again.isEmpty)
        #expect(h.machine.restarts == 1)
    }

    @Test func progressIsForwardedAtMostFiveTimesASecond() {
        var h = Harness()
        h.startReady()
        h.welcome()
        h.batch("a", requests: 10)
        var forwarded = 0
        for done in 1...9 {
            h.now += 50
            forwarded += h.progress("a", done: UInt32(done), total: 10).sent.filter { if case .progress = $0 { return true }; return false }.count
        }
        #expect(forwarded == 3, "progress every 50 ms for 400 ms goes out every 200 ms: \(forwarded) forwarded")
    }
}
