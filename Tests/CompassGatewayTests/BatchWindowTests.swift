@testable import CompassGateway
import Testing

/// The batching decision alone: an injected clock (nanoseconds), no tasks, no sleeps.
@Suite("the gateway's batching window")
struct BatchWindowTests {
    static let ms: UInt64 = 1_000_000

    func window(maxBatch: Int = 32, maxBatchBytes: Int = 1 << 20, waitMs: UInt64 = 5, eager: Int = 2) -> BatchWindow {
        BatchWindow(configuration: .init(maxBatch: maxBatch, maxBatchBytes: maxBatchBytes, maxWaitNanoseconds: waitMs * Self.ms, eagerBatches: eager))
    }

    @Test func aRequestForAnIdlePoolGoesAtOnceWithoutATimer() {
        var w = window(waitMs: 5)
        let (flushes, timer) = w.add(id: 1, bytes: 100, pool: "p", room: .init(), now: 1000 * Self.ms)
        #expect(flushes == [.init(pool: "p", ids: [1], reason: .spare)])
        #expect(timer == nil)
        #expect(w.stats.maxWaitNanoseconds == 0 && w.stats.totalWaitNanoseconds == 0)
        #expect(w.inFlight("p") == (batches: 1, requests: 1))
    }

    @Test func eagerBatchesPerWorkerGoAtOnceThenRequestsGatherAndLeaveWhenOneComesBack() {
        var w = window(waitMs: 5, eager: 2)
        let room = BatchWindow.Room(workers: 2, capacity: nil)
        // Two workers, two eager batches each: four requests go alone.
        for id in 1...4 as ClosedRange<UInt64> {
            #expect(w.add(id: id, bytes: 10, pool: "p", room: room, now: id * Self.ms).flushes.map(\.reason) == [.spare])
        }
        // The fifth finds the pool busy: it waits, with a timer at its arrival plus the window.
        let fifth = w.add(id: 5, bytes: 10, pool: "p", room: room, now: 10 * Self.ms)
        #expect(fifth.flushes.isEmpty)
        #expect(fifth.timer == BatchWindow.Timer(pool: "p", generation: 4, deadline: 15 * Self.ms))
        // The sixth joins it; no second timer.
        let sixth = w.add(id: 6, bytes: 10, pool: "p", room: room, now: 11 * Self.ms)
        #expect(sixth.flushes.isEmpty && sixth.timer == nil)
        // A batch comes back at 12 ms: both go together, having waited 2 and 1 ms.
        let freed = w.finished(pool: "p", requests: 1, room: room, now: 12 * Self.ms)
        #expect(freed == .init(pool: "p", ids: [5, 6], reason: .freed))
        #expect(w.stats.totalWaitNanoseconds == 3 * Self.ms && w.stats.maxWaitNanoseconds == 2 * Self.ms)
        #expect(w.inFlight("p") == (batches: 4, requests: 5))
        // The timer armed for them finds nothing to do.
        #expect(w.timerFired(pool: "p", generation: 4, now: 15 * Self.ms) == nil)
        #expect(w.stats.flushes == [.spare: 4, .freed: 1])
    }

    @Test func theWindowBoundsTheWaitWhileThePoolStaysBusy() {
        var w = window(waitMs: 5, eager: 1)
        _ = w.add(id: 1, bytes: 10, pool: "p", room: .init(), now: 0)
        let second = w.add(id: 2, bytes: 10, pool: "p", room: .init(), now: 1 * Self.ms)
        let timer = try! #require(second.timer)
        _ = w.add(id: 3, bytes: 10, pool: "p", room: .init(), now: 3 * Self.ms)
        let flush = w.timerFired(pool: "p", generation: timer.generation, now: timer.deadline)
        #expect(flush == .init(pool: "p", ids: [2, 3], reason: .window))
        #expect(w.stats.maxWaitNanoseconds == 5 * Self.ms)
        // Gathering batches count as in flight too: the pool stays busy until one comes back.
        #expect(w.inFlight("p") == (batches: 2, requests: 3))
        #expect(w.add(id: 4, bytes: 10, pool: "p", room: .init(), now: 7 * Self.ms).flushes.isEmpty)
    }

    @Test func aFullBatchOrTooManyBytesGoAtOnceWhileBusy() {
        var w = window(maxBatch: 3, maxBatchBytes: 250, eager: 1)
        _ = w.add(id: 1, bytes: 10, pool: "p", room: .init(), now: 0)
        #expect(w.add(id: 2, bytes: 10, pool: "p", room: .init(), now: 1).flushes.isEmpty)
        #expect(w.add(id: 3, bytes: 10, pool: "p", room: .init(), now: 2).flushes.isEmpty)
        #expect(w.add(id: 4, bytes: 10, pool: "p", room: .init(), now: 3).flushes == [.init(pool: "p", ids: [2, 3, 4], reason: .full)])
        // 200 + 100 bytes would pass 250: the first goes before the second joins.
        #expect(w.add(id: 5, bytes: 200, pool: "p", room: .init(), now: 4).flushes.isEmpty)
        #expect(w.add(id: 6, bytes: 100, pool: "p", room: .init(), now: 5).flushes == [.init(pool: "p", ids: [5], reason: .full)])
        #expect(w.pendingCount("p") == 1)
    }

    @Test func aKnownCapacityCountsRequestsNotBatches() {
        var w = window(eager: 0)
        let room = BatchWindow.Room(workers: 1, capacity: 3)
        for id in 1...3 as ClosedRange<UInt64> {
            #expect(w.add(id: id, bytes: 10, pool: "p", room: room, now: 0).flushes.map(\.reason) == [.spare])
        }
        #expect(w.add(id: 4, bytes: 10, pool: "p", room: room, now: 0).flushes.isEmpty)
        #expect(w.finished(pool: "p", requests: 1, room: room, now: 1)?.ids == [4])
    }

    @Test func noEagerBatchesAndNoCapacityIsTheOldFixedWindow() {
        var w = window(waitMs: 5, eager: 0)
        let first = w.add(id: 1, bytes: 10, pool: "p", room: .init(), now: 0)
        #expect(first.flushes.isEmpty && first.timer?.deadline == 5 * Self.ms)
        #expect(w.timerFired(pool: "p", generation: first.timer!.generation, now: 5 * Self.ms)?.reason == .window)
    }

    @Test func poolsAreApartAndARemovedRequestLeaves() {
        var w = window(eager: 1)
        _ = w.add(id: 1, bytes: 10, pool: "a", room: .init(), now: 0)
        #expect(w.add(id: 2, bytes: 10, pool: "b", room: .init(), now: 0).flushes.map(\.reason) == [.spare])
        let pending = w.add(id: 3, bytes: 10, pool: "a", room: .init(), now: 0)
        #expect(pending.flushes.isEmpty)
        w.remove(id: 3, pool: "a")
        #expect(w.pendingCount("a") == 0)
        #expect(w.finished(pool: "a", requests: 1, room: .init(), now: 1) == nil)
        #expect(w.timerFired(pool: "a", generation: pending.timer!.generation, now: 10) == nil)
        #expect(w.inFlight("a") == (batches: 0, requests: 0))
    }
}
