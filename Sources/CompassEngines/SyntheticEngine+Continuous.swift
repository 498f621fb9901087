import CompassProtocol
import CompassSystem
import Foundation

extension SyntheticEngine {
    /// The continuous-batching mode: a step loop over a `ContinuousBatcher`. Jobs and cancels that
    /// arrived are taken between steps, so a request joins at the next step after it arrives, as in
    /// vLLM; the thread sleeps only while nothing is running or waiting. A step costs `step_us` plus
    /// `seq_us` per running sequence plus `prefill_us` per prompt token of the sequences it admits.
    func runSteps(_ p: StepProfile, generation mine: Int) {
        let detail = "synthetic engine, continuous batching of \(p.capacity) sequences, step \(p.stepMicroseconds) us + \(p.sequenceMicroseconds) us per sequence"
        post(.ready(detail: detail, capacity: EngineCapacity(sequences: p.capacity)), generation: mine)
        var batcher = ContinuousBatcher(capacity: p.capacity)
        /// Batches inside the batcher, by the key `cancel` uses.
        var live: [String: ContinuousBatcher.Key] = [:]
        while true {
            condition.lock()
            while generation == mine && jobs.isEmpty && !batcher.hasWork { condition.wait() }
            guard generation == mine else { condition.unlock(); return }
            let arrived = Array(jobs)
            jobs.removeAll()
            let toCancel = live.keys.filter { cancelled.contains($0) }
            for key in toCancel { cancelled.remove(key) }
            condition.unlock()

            for name in toCancel {
                guard let key = live.removeValue(forKey: name), batcher.cancel(key) else { continue }
                post(.failed(batchID: key.batchID, attempt: key.attempt, code: .cancelled, retryable: false, message: "cancelled"), generation: mine)
            }
            for job in arrived {
                guard admit(job, into: &batcher, live: &live, generation: mine) else { return }
            }
            guard batcher.hasWork else { continue }
            let (running, joined) = batcher.beginStep()
            let micros = p.stepMicroseconds + UInt64(running) * p.sequenceMicroseconds + UInt64(joined) * p.prefillMicrosecondsPerToken
            guard step(micros, generation: mine) else { return }
            for event in batcher.endStep() {
                switch event {
                case .progress(let key, let done, let total):
                    post(.progress(batchID: key.batchID, attempt: key.attempt, done: UInt32(done), total: UInt32(total)), generation: mine)
                case .finished(let key, let results, let engineStats, let started):
                    live[Self.key(key.batchID, key.attempt)] = nil
                    finish(key, results, stats(results, since: started, engine: engineStats), generation: mine)
                }
            }
        }
    }

    /// Puts a job's requests in the queue; false when a marker killed the engine.
    private func admit(_ job: EngineJob, into batcher: inout ContinuousBatcher, live: inout [String: ContinuousBatcher.Key],
                       generation mine: Int) -> Bool {
        let started = MonotonicClock.nanoseconds()
        let key = ContinuousBatcher.Key(job.batchID, job.attempt)
        switch prepare(job) {
        case .invalid(let message):
            post(.failed(batchID: job.batchID, attempt: job.attempt, code: .badRequest, retryable: false, message: message), generation: mine)
        case .crash(let customID):
            post(.died(code: .engineDead, message: "synthetic engine crashed on request \(customID) (@@crash)"), generation: mine)
            return false
        case .hang:
            // A hung GPU stalls every sequence, not one: no step runs until this batch is cancelled.
            _ = pause(.max, job: job, generation: mine)
            return finishCancelled(job, generation: mine)
        case .run(let results, let requests):
            // A request runs for one step per generated token; one that generates none (scoring,
            // max_tokens 0) still takes a step for its prefill.
            let tokens = zip(results, requests).map { result, request in request.map { _ in max(1, result.completionTokens) } }
            if case .finished(_, let all, let engineStats, _) = batcher.add(key, results: results, tokens: tokens, startedAt: started) {
                finish(key, all, stats(all, since: started, engine: engineStats), generation: mine)
            } else {
                live[Self.key(job.batchID, job.attempt)] = key
            }
        }
        return true
    }

    private func finish(_ key: ContinuousBatcher.Key, _ results: [InferenceResult], _ stats: ResultStats, generation mine: Int) {
        let payload = (try? JSONEncoder().encode(results)).map { [UInt8]($0) } ?? Array("[]".utf8)
        post(.finished(batchID: key.batchID, attempt: key.attempt, payload: payload, stats: stats), generation: mine)
    }

    /// Sleeps for one step's cost; false if the engine was stopped meanwhile. Arrivals do not cut
    /// a step short: they join the next one.
    private func step(_ microseconds: UInt64, generation mine: Int) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard microseconds > 0 else { return generation == mine }
        let until = Date().addingTimeInterval(Double(microseconds) / 1e6)
        while generation == mine && condition.wait(until: until) {}
        return generation == mine
    }
}
