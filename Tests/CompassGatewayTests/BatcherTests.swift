@testable import CompassGateway
import CompassProtocol
import Foundation
import Synchronization
import Testing

/// A fake broker: answers each batch with every prompt's words reversed, and records the batches.
final class FakePool: Sendable {
    let batches = Mutex<[(pool: String, ids: [String], deadline: UInt32)]>([])
    /// Batches of more requests than this are refused as too_large.
    let maxRequests: Int
    let delayNanoseconds: UInt64

    init(maxRequests: Int = .max, delayNanoseconds: UInt64 = 0) {
        self.maxRequests = maxRequests
        self.delayNanoseconds = delayNanoseconds
    }

    var sizes: [Int] { batches.withLock { $0.map(\.ids.count) } }

    func submit(_ pool: String, _ requests: [InferenceRequest], _ deadline: UInt32) async -> BatchAnswer {
        if requests.count > maxRequests {
            return BatchAnswer(failure: CompassFailure(code: "too_large", message: "too many"))
        }
        batches.withLock { $0.append((pool, requests.map(\.customID), deadline)) }
        if delayNanoseconds > 0 { try? await Task.sleep(nanoseconds: delayNanoseconds) }
        var results: [String: InferenceResult] = [:]
        for r in requests {
            let prompt = r.prompt ?? ""
            if prompt.contains("@@fail") {
                results[r.customID] = .failure(r.customID, code: "bad_request", message: "asked to fail")
            } else {
                let words = prompt.split(separator: " ").reversed().joined(separator: " ")
                results[r.customID] = InferenceResult(customID: r.customID, text: "\(pool):\(words)", promptTokens: 1,
                                                      completionTokens: 1, finishReason: "stop")
            }
        }
        return BatchAnswer(results: results)
    }
}

func request(_ prompt: String) -> InferenceRequest { InferenceRequest(customID: "", prompt: prompt) }

@Suite("the gateway's dynamic batcher", .timeLimit(.minutes(1)))
struct BatcherTests {
    @Test func concurrentRequestsShareOneBatchAndEachGetsItsOwnResult() async throws {
        let fake = FakePool()
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 300, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        let texts = try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for i in 0..<10 { group.addTask { (i, try await batcher.submit(request("a\(i) b\(i)"), pool: "p").text ?? "") } }
            var out: [Int: String] = [:]
            for try await (i, text) in group { out[i] = text }
            return out
        }
        for i in 0..<10 { #expect(texts[i] == "p:b\(i) a\(i)") }
        #expect(fake.sizes == [10])
        #expect(batcher.stats.batches == 1 && batcher.stats.requests == 10)
    }

    @Test func aFullBatchGoesAtOnceAndTheRestAfterTheWait() async throws {
        let fake = FakePool()
        let batcher = Batcher(configuration: .init(maxBatch: 4, maxWaitMilliseconds: 100, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<10 { group.addTask { _ = try await batcher.submit(request("r\(i)"), pool: "p") } }
            try await group.waitForAll()
        }
        #expect(fake.sizes.sorted() == [2, 4, 4])
        #expect(batcher.stats.largestBatch == 4)
    }

    @Test func poolsAreBatchedApart() async throws {
        let fake = FakePool()
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 200, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        let texts = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<6 { group.addTask { try await batcher.submit(request("x"), pool: i % 2 == 0 ? "even" : "odd").text ?? "" } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(texts.sorted() == ["even:x", "even:x", "even:x", "odd:x", "odd:x", "odd:x"])
        #expect(Set(fake.batches.withLock { $0.map(\.pool) }) == ["even", "odd"])
        #expect(fake.sizes == [3, 3])
    }

    @Test func theByteBoundCutsBatches() async throws {
        let fake = FakePool()
        // Each request weighs about 1160 bytes here: two fit under 3000, three do not.
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 100, maxBatchBytes: 3000, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        let prompt = String(repeating: "y", count: 1000)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<6 { group.addTask { _ = try await batcher.submit(request(prompt), pool: "p") } }
            try await group.waitForAll()
        }
        #expect(fake.sizes.allSatisfy { $0 <= 2 })
        #expect(fake.sizes.reduce(0, +) == 6)
    }

    @Test func aBatchRefusedAsTooLargeIsSplitUntilItPasses() async throws {
        let fake = FakePool(maxRequests: 3)
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 200, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        let texts = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<16 { group.addTask { try await batcher.submit(request("n\(i)"), pool: "p").text ?? "" } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(Set(texts) == Set((0..<16).map { "p:n\($0)" }))
        #expect(fake.sizes.allSatisfy { $0 <= 3 } && fake.sizes.reduce(0, +) == 16)
    }

    @Test func oneFailingRequestFailsAloneWithItsCode() async throws {
        let fake = FakePool()
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 200, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        let good = Task { try await batcher.submit(request("fine"), pool: "p") }
        let bad = Task { try await batcher.submit(request("@@fail"), pool: "p") }
        #expect(try await good.value.text == "p:fine")
        await #expect(throws: CompassFailure(code: "bad_request", message: "asked to fail")) { _ = try await bad.value }
        #expect(fake.sizes == [2])
    }

    @Test func aBatchFailureReachesEveryRequestOfTheBatch() async throws {
        let batcher = Batcher(configuration: .init(maxBatch: 2, maxWaitMilliseconds: 1000, eagerBatches: 0)) { _, _, _ in
            BatchAnswer(failure: CompassFailure(code: "busy", message: "full", retryAfterMilliseconds: 70))
        }
        let a = Task { try await batcher.submit(request("a"), pool: "p") }
        let b = Task { try await batcher.submit(request("b"), pool: "p") }
        for result in [await a.result, await b.result] {
            guard case .failure(let error as CompassFailure) = result else { Issue.record("expected a failure"); continue }
            #expect(error.code == "busy" && error.retryAfterMilliseconds == 70)
        }
    }

    @Test func theDeadlineAnswersARequestTheBrokerHolds() async throws {
        // The fake broker holds the batch until the test lets it go, after the request has been
        // answered: only the deadline can answer it. (No wall-clock bound: a loaded machine may
        // run the timer late, and may run it before the batch even leaves, which is fine too.)
        let fake = FakePool()
        let gate = Mutex<(released: Bool, waiting: CheckedContinuation<Void, Never>?)>((false, nil))
        let batcher = Batcher(configuration: .init(maxBatch: 1, maxWaitMilliseconds: 0, eagerBatches: 0)) { pool, requests, deadline in
            await withCheckedContinuation { c in
                let go = gate.withLock { g -> Bool in
                    if g.released { return true }
                    g.waiting = c
                    return false
                }
                if go { c.resume() }
            }
            return await fake.submit(pool, requests, deadline)
        }
        let failure = await #expect(throws: CompassFailure.self) {
            _ = try await batcher.submit(request("slow"), pool: "p", deadlineMilliseconds: 100)
        }
        #expect(failure?.code == CompassFailure.deadlineCode)
        gate.withLock { g in g.released = true; return g.waiting }?.resume()
    }

    @Test func aRequestsDeadlineGoesToTheBrokerAsTheTimeItHasLeft() async throws {
        let fake = FakePool()
        let batcher = Batcher(configuration: .init(maxBatch: 1, maxWaitMilliseconds: 0, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        #expect(try await batcher.submit(request("in time"), pool: "p", deadlineMilliseconds: 60_000).text == "p:time in")
        let deadline = try #require(fake.batches.withLock { $0.first?.deadline })
        #expect(deadline > 0 && deadline <= 60_000, "\(deadline)")
    }

    @Test func aCancelledRequestLeavesItsPendingBatch() async throws {
        let fake = FakePool()
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 300, eagerBatches: 0)) { await fake.submit($0, $1, $2) }
        let doomed = Task { try await batcher.submit(request("doomed"), pool: "p") }
        let kept = Task { try await batcher.submit(request("kept"), pool: "p") }
        doomed.cancel()
        await #expect(throws: CancellationError.self) { _ = try await doomed.value }
        #expect(try await kept.value.text == "p:kept")
        #expect(fake.sizes == [1])
    }
    @Test func aLoneRequestForAnIdlePoolIsNotHeldForTheWindow() async throws {
        let fake = FakePool()
        // A 10 s window: a request held for it would fail the test's time limit, but the assertion
        // is on the batcher's own record: it went out because the pool had room, having waited 0.
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 10_000)) { await fake.submit($0, $1, $2) }
        #expect(try await batcher.submit(request("alone here"), pool: "p").text == "p:here alone")
        let stats = batcher.stats
        #expect(stats.flushes == [.spare: 1])
        #expect(stats.batches == 1 && stats.maxWaitNanoseconds < 1_000_000_000)
    }

    @Test func whileThePoolIsBusyRequestsGatherAndGoWhenABatchComesBack() async throws {
        // One eager batch per worker, one worker: the first request goes at once and is held by the
        // fake broker until the next five have gathered behind it; they leave together the moment
        // it comes back (a window of a minute: not the timer).
        let fake = FakePool()
        let gate = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 60_000, eagerBatches: 1)) { pool, requests, deadline in
            if requests.first?.prompt == "first" { await withCheckedContinuation { c in gate.withLock { $0 = c } } }
            return await fake.submit(pool, requests, deadline)
        }
        let first = Task { try await batcher.submit(request("first"), pool: "p") }
        try await until { gate.withLock { $0 != nil } }
        let rest = (0..<5).map { i in Task { try await batcher.submit(request("r\(i)"), pool: "p") } }
        try await until { batcher.state.withLock { $0.window.pendingCount("p") } == 5 }
        gate.withLock { $0 }?.resume()
        #expect(try await first.value.text == "p:first")
        for (i, task) in rest.enumerated() { #expect(try await task.value.text == "p:r\(i)") }
        #expect(fake.sizes == [1, 5])
        #expect(batcher.stats.flushes == [.spare: 1, .freed: 1])
    }

    /// Polls `condition` (10 s at most).
    func until(_ condition: () -> Bool) async throws {
        for _ in 0..<10_000 where !condition() { try await Task.sleep(nanoseconds: 1_000_000) }
        try #require(condition())
    }

    @Test func aPoolWithKnownCapacityTakesThatManyRequestsAtOnce() async throws {
        let fake = FakePool(delayNanoseconds: 50_000_000)
        let batcher = Batcher(configuration: .init(maxBatch: 32, maxWaitMilliseconds: 60_000, eagerBatches: 0),
                              room: { _ in .init(workers: 1, capacity: 4) }) { await fake.submit($0, $1, $2) }
        let tasks = (0..<4).map { i in Task { try await batcher.submit(request("c\(i)"), pool: "p") } }
        for task in tasks { _ = try await task.value }
        #expect(fake.sizes == [1, 1, 1, 1])
        #expect(batcher.stats.flushes == [.spare: 4])
    }
}
