import CompassProtocol
import CompassSystem
import Foundation

extension SyntheticEngine {
    /// The default mode: one batch at a time, in arrival order, as engines without continuous
    /// batching run (hf's generate, one vLLM `LLM.generate` call).
    func runBatches(generation mine: Int) {
        post(.ready(detail: "synthetic engine, latency \(profile)", capacity: EngineCapacity(maxBatches: 1)), generation: mine)
        while true {
            condition.lock()
            while generation == mine && jobs.isEmpty { condition.wait() }
            guard generation == mine else { condition.unlock(); return }
            let job = jobs.removeFirst()
            condition.unlock()
            if !run(job, generation: mine) { return }
        }
    }

    /// Runs one job; returns false when the engine "died" and its thread must end.
    private func run(_ job: EngineJob, generation mine: Int) -> Bool {
        let started = MonotonicClock.nanoseconds()
        let results: [InferenceResult], requests: [InferenceRequest]
        switch prepare(job) {
        case .invalid(let message):
            post(.failed(batchID: job.batchID, attempt: job.attempt, code: .badRequest, retryable: false, message: message), generation: mine)
            return true
        case .crash(let customID):
            post(.died(code: .engineDead, message: "synthetic engine crashed on request \(customID) (@@crash)"), generation: mine)
            return false
        case .hang:
            _ = pause(.max, job: job, generation: mine)
            return finishCancelled(job, generation: mine)
        case .run(let all, let valid):
            results = all
            requests = valid.compactMap { $0 }
        }
        let total = UInt32(results.count)
        if !profile.isZero {
            let micros = SyntheticModel.latencyMicroseconds(requests, results: results, profile: profile)
            // Report progress in a few steps, as a real engine finishing requests one by one would.
            let steps = UInt64(min(4, max(1, results.count)))
            for step in 1...steps {
                guard pause(micros / steps, job: job, generation: mine) else { return finishCancelled(job, generation: mine) }
                post(.progress(batchID: job.batchID, attempt: job.attempt, done: UInt32(UInt64(total) * step / steps), total: total), generation: mine)
            }
        }
        let payload = (try? JSONEncoder().encode(results)).map { [UInt8]($0) } ?? Array("[]".utf8)
        post(.finished(batchID: job.batchID, attempt: job.attempt, payload: payload, stats: stats(results, since: started)), generation: mine)
        return true
    }
}
