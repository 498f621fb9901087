import CompassProtocol
import CompassSystem
import DequeModule
import Foundation

/// The default engine: runs in the worker's process on a thread of its own, needs no GPU, and is
/// deterministic (see `SyntheticModel`). A latency profile makes it behave like a GPU for benchmarks.
///
/// Markers in a prompt inject faults, for tests and chaos runs:
/// `@@crash` the engine dies mid-batch (as a crashed engine process would), `@@hang` it stops making
/// progress until cancelled or stopped, `@@fail` that request alone fails with `bad_request`,
/// `@@exit` the whole worker process exits at once (as if SIGKILLed). `@@crash1` and `@@hang1` do
/// so on a batch's first attempt only (a transient fault: the retry succeeds).
public final class SyntheticEngine: Engine, @unchecked Sendable {
    // @unchecked: every mutable field below is read and written only with `condition` held.
    public let name = "synthetic"
    public let profile: LatencyProfile
    public let startupMilliseconds: UInt64
    private let condition = NSCondition()
    private var jobs: Deque<EngineJob> = []
    private var cancelled: Set<String> = []
    private var generation = 0
    private var events: [EngineEvent] = []
    private let wakeup: WakeupEvent
    public let workerLabel: String

    public init(profile: LatencyProfile = LatencyProfile(), startupMilliseconds: UInt64 = 0, workerLabel: String = "") throws {
        self.profile = profile
        self.startupMilliseconds = startupMilliseconds
        self.workerLabel = workerLabel
        wakeup = try WakeupEvent()
    }

    /// Builds the engine from `--engine-arg` values: `batch_ms`, `prefill_us`, `decode_us`, `startup_ms`.
    public convenience init(arguments: [String: String], workerLabel: String) throws {
        func number(_ key: String) throws -> UInt64 {
            guard let text = arguments[key] else { return 0 }
            guard let value = Double(text), value >= 0 else {
                throw EngineConfigurationError(message: "--engine-arg \(key)=\(text): expected a non-negative number")
            }
            return UInt64(value)
        }
        let known: Set<String> = ["batch_ms", "batch_us", "prefill_us", "decode_us", "startup_ms"]
        if let unknown = arguments.keys.first(where: { !known.contains($0) }) {
            throw EngineConfigurationError(message: "the synthetic engine has no argument '\(unknown)' (it takes \(known.sorted().joined(separator: ", ")))")
        }
        let profile = LatencyProfile(batchMicroseconds: try number("batch_ms") * 1000 + number("batch_us"),
                                     prefillMicrosecondsPerToken: try number("prefill_us"),
                                     decodeMicrosecondsPerStep: try number("decode_us"))
        try self.init(profile: profile, startupMilliseconds: try number("startup_ms"), workerLabel: workerLabel)
    }

    public var eventFD: Int32 { wakeup.fd }

    public func start() throws {
        condition.lock()
        generation += 1
        let mine = generation
        jobs.removeAll()
        cancelled.removeAll()
        condition.unlock()
        let thread = Thread { [self] in self.loop(generation: mine) }
        thread.name = "synthetic-engine"
        thread.start()
    }

    public func submit(_ job: EngineJob) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    public func cancel(batchID: String, attempt: UInt32) {
        condition.lock()
        cancelled.insert("\(batchID)#\(attempt)")
        condition.broadcast()
        condition.unlock()
    }

    public func takeEvents() -> [EngineEvent] {
        wakeup.clear()
        condition.lock()
        defer { condition.unlock() }
        let out = events
        events.removeAll()
        return out
    }

    public func stop() {
        condition.lock()
        generation += 1 // the running thread sees it and exits
        jobs.removeAll()
        condition.broadcast()
        condition.unlock()
    }

    // MARK: The engine thread

    private func post(_ event: EngineEvent, generation mine: Int) {
        condition.lock()
        let current = generation == mine
        if current { events.append(event) }
        condition.unlock()
        if current { wakeup.signal() }
    }

    /// Sleeps up to `microseconds`; returns false if the job was cancelled or the engine stopped.
    private func pause(_ microseconds: UInt64, job: EngineJob, generation mine: Int) -> Bool {
        let key = "\(job.batchID)#\(job.attempt)"
        let until = Date().addingTimeInterval(Double(microseconds) / 1e6)
        condition.lock()
        defer { condition.unlock() }
        while generation == mine && !cancelled.contains(key) {
            if microseconds == .max { condition.wait() } else if !condition.wait(until: until) { break }
        }
        return generation == mine && !cancelled.contains(key)
    }

    private func loop(generation mine: Int) {
        if startupMilliseconds > 0 { Thread.sleep(forTimeInterval: Double(startupMilliseconds) / 1000) }
        post(.ready(detail: "synthetic engine, latency \(profile)", maxBatches: 1), generation: mine)
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
        let items: [RequestDecoding.Item]
        switch RequestDecoding.decode(job.payload) {
        case .failure(let error):
            post(.failed(batchID: job.batchID, attempt: job.attempt, code: .badRequest, retryable: false, message: error.message), generation: mine)
            return true
        case .success(let decoded):
            items = decoded
        }
        var results: [InferenceResult] = []
        var requests: [InferenceRequest] = []
        results.reserveCapacity(items.count)
        for item in items {
            switch item {
            case .invalid(let customID, let message):
                results.append(.failure(customID, code: FailureCode.badRequest.rawValue, message: message))
            case .request(let request):
                let prompt = request.flattenedPrompt
                let first = job.attempt == 1
                if prompt.contains("@@exit") { exit(137) }
                if prompt.contains("@@crash") && (first || !prompt.contains("@@crash1")) {
                    post(.died(code: .engineDead, message: "synthetic engine crashed on request \(request.customID) (@@crash)"), generation: mine)
                    return false
                }
                if prompt.contains("@@hang") && (first || !prompt.contains("@@hang1")) {
                    _ = pause(.max, job: job, generation: mine)
                    return finishCancelled(job, generation: mine)
                }
                if prompt.contains("@@fail") {
                    results.append(.failure(request.customID, code: FailureCode.badRequest.rawValue, message: "request rejected by @@fail marker"))
                } else {
                    requests.append(request)
                    results.append(SyntheticModel.complete(request))
                }
            }
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
        let stats = ResultStats(
            requests: results.count, failedRequests: results.filter { $0.error != nil }.count,
            promptTokens: results.reduce(0) { $0 + $1.promptTokens }, completionTokens: results.reduce(0) { $0 + $1.completionTokens },
            engineMilliseconds: Double(MonotonicClock.nanoseconds() - started) / 1e6, worker: workerLabel)
        post(.finished(batchID: job.batchID, attempt: job.attempt, payload: payload, stats: stats), generation: mine)
        return true
    }

    /// A job ended by cancel or stop: report it as cancelled (if the engine is still current).
    private func finishCancelled(_ job: EngineJob, generation mine: Int) -> Bool {
        post(.failed(batchID: job.batchID, attempt: job.attempt, code: .cancelled, retryable: false, message: "cancelled"), generation: mine)
        condition.lock()
        defer { condition.unlock() }
        return generation == mine
    }
}

/// A bad `--engine-arg` or engine name.
public struct EngineConfigurationError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
