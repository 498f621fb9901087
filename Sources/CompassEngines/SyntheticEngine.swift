import CompassProtocol
import CompassSystem
import DequeModule
import Foundation

/// The default engine: runs in the worker's process on a thread of its own, needs no GPU, and is
/// deterministic (see `SyntheticModel`). A latency profile makes it behave like a GPU for benchmarks.
///
/// Two modes. By default it runs one batch at a time (`SyntheticEngine+Batch.swift`). With
/// `capacity=N` it batches continuously as vLLM does (`SyntheticEngine+Continuous.swift`): up to N
/// sequences run at once, each step advances every one of them by a token, requests of any batch
/// join between steps, and each result carries the engine's own occupancy count.
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
    /// The continuous-batching mode's settings; nil: one batch at a time.
    public let stepping: StepProfile?
    public let startupMilliseconds: UInt64
    let condition = NSCondition()
    var jobs: Deque<EngineJob> = []
    var cancelled: Set<String> = []
    var generation = 0
    private var events: [EngineEvent] = []
    private let wakeup: WakeupEvent
    public let workerLabel: String

    public init(profile: LatencyProfile = LatencyProfile(), stepping: StepProfile? = nil, startupMilliseconds: UInt64 = 0,
                workerLabel: String = "") throws {
        self.profile = profile
        self.stepping = stepping
        self.startupMilliseconds = startupMilliseconds
        self.workerLabel = workerLabel
        wakeup = try WakeupEvent()
    }

    /// Builds the engine from `--engine-arg` values: `batch_ms` (or `batch_us`), `prefill_us`,
    /// `decode_us` and `startup_ms`; `capacity`, `step_us` and `seq_us` for the continuous mode.
    public convenience init(arguments: [String: String], workerLabel: String) throws {
        func number(_ key: String) throws -> UInt64 {
            guard let text = arguments[key] else { return 0 }
            guard let value = Double(text), value >= 0 else {
                throw EngineConfigurationError(message: "--engine-arg \(key)=\(text): expected a non-negative number")
            }
            return UInt64(value)
        }
        let known: Set<String> = ["batch_ms", "batch_us", "prefill_us", "decode_us", "startup_ms", "capacity", "step_us", "seq_us"]
        if let unknown = arguments.keys.sorted().first(where: { !known.contains($0) }) {
            throw EngineConfigurationError(message: "the synthetic engine has no argument '\(unknown)' (it takes \(known.sorted().joined(separator: ", ")))")
        }
        var stepping: StepProfile?
        if arguments["capacity"] != nil {
            let capacity = try number("capacity")
            guard capacity >= 1, capacity <= UInt64(EngineCapacity.sequencesLimit) else {
                throw EngineConfigurationError(message: "--engine-arg capacity=\(arguments["capacity"]!): expected 1 to \(EngineCapacity.sequencesLimit) sequences")
            }
            // A step's cost replaces the batch's: a continuous engine has no per-batch cost.
            if let batchOnly = ["batch_ms", "batch_us", "decode_us"].first(where: { arguments[$0] != nil }) {
                throw EngineConfigurationError(message: "--engine-arg \(batchOnly) applies to one batch at a time; with capacity= give step_us (per step) and seq_us (per running sequence per step)")
            }
            stepping = StepProfile(capacity: Int(capacity), stepMicroseconds: try number("step_us"),
                                   sequenceMicroseconds: try number("seq_us"), prefillMicrosecondsPerToken: try number("prefill_us"))
        } else if let stepOnly = ["step_us", "seq_us"].first(where: { arguments[$0] != nil }) {
            throw EngineConfigurationError(message: "--engine-arg \(stepOnly) needs capacity=N (the continuous-batching mode)")
        }
        let profile = LatencyProfile(batchMicroseconds: try number("batch_ms") * 1000 + number("batch_us"),
                                     prefillMicrosecondsPerToken: try number("prefill_us"),
                                     decodeMicrosecondsPerStep: try number("decode_us"))
        try self.init(profile: profile, stepping: stepping, startupMilliseconds: try number("startup_ms"), workerLabel: workerLabel)
    }

    public var eventFD: Int32 { wakeup.fd }

    public func start() throws {
        condition.lock()
        generation += 1
        let mine = generation
        jobs.removeAll()
        cancelled.removeAll()
        condition.unlock()
        let thread = Thread { [self] in
            if startupMilliseconds > 0 { Thread.sleep(forTimeInterval: Double(startupMilliseconds) / 1000) }
            if let stepping { runSteps(stepping, generation: mine) } else { runBatches(generation: mine) }
        }
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
        cancelled.insert(Self.key(batchID, attempt))
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

    // MARK: Shared by both modes, on the engine thread

    static func key(_ batchID: String, _ attempt: UInt32) -> String { "\(batchID)#\(attempt)" }

    func post(_ event: EngineEvent, generation mine: Int) {
        condition.lock()
        let current = generation == mine
        if current { events.append(event) }
        condition.unlock()
        if current { wakeup.signal() }
    }

    /// Sleeps up to `microseconds`; returns false if the job was cancelled or the engine stopped.
    func pause(_ microseconds: UInt64, job: EngineJob, generation mine: Int) -> Bool {
        let key = Self.key(job.batchID, job.attempt)
        let until = Date().addingTimeInterval(Double(microseconds) / 1e6)
        condition.lock()
        defer { condition.unlock() }
        while generation == mine && !cancelled.contains(key) {
            if microseconds == .max { condition.wait() } else if !condition.wait(until: until) { break }
        }
        return generation == mine && !cancelled.contains(key)
    }

    /// A job ended by cancel or stop: report it as cancelled (if the engine is still current).
    func finishCancelled(_ job: EngineJob, generation mine: Int) -> Bool {
        post(.failed(batchID: job.batchID, attempt: job.attempt, code: .cancelled, retryable: false, message: "cancelled"), generation: mine)
        condition.lock()
        defer { condition.unlock() }
        return generation == mine
    }

    /// What a job asks of the engine, markers applied in request order.
    enum Prepared {
        /// Not a JSON array: the batch fails as a whole.
        case invalid(String)
        /// A `@@crash` request: the engine dies (request id).
        case crash(String)
        /// A `@@hang` request: no progress until cancelled.
        case hang
        /// Results in request order; `requests[i]` is nil for a request answered already (it failed alone).
        case run(results: [InferenceResult], requests: [InferenceRequest?])
    }

    func prepare(_ job: EngineJob) -> Prepared {
        let items: [RequestDecoding.Item]
        switch RequestDecoding.decode(job.payload) {
        case .failure(let error): return .invalid(error.message)
        case .success(let decoded): items = decoded
        }
        var results: [InferenceResult] = []
        var requests: [InferenceRequest?] = []
        results.reserveCapacity(items.count)
        for item in items {
            switch item {
            case .invalid(let customID, let message):
                results.append(.failure(customID, code: FailureCode.badRequest.rawValue, message: message))
                requests.append(nil)
            case .request(let request):
                let prompt = request.flattenedPrompt
                let first = job.attempt == 1
                if prompt.contains("@@exit") { exit(137) }
                if prompt.contains("@@crash") && (first || !prompt.contains("@@crash1")) { return .crash(request.customID) }
                if prompt.contains("@@hang") && (first || !prompt.contains("@@hang1")) { return .hang }
                if prompt.contains("@@fail") {
                    results.append(.failure(request.customID, code: FailureCode.badRequest.rawValue, message: "request rejected by @@fail marker"))
                    requests.append(nil)
                } else {
                    results.append(SyntheticModel.complete(request))
                    requests.append(request)
                }
            }
        }
        return .run(results: results, requests: requests)
    }

    /// The figures of a result, counted from its requests' results.
    func stats(_ results: [InferenceResult], since started: UInt64, engine: EngineStepStats? = nil) -> ResultStats {
        ResultStats(requests: results.count, failedRequests: results.filter { $0.error != nil }.count,
                    promptTokens: results.reduce(0) { $0 + $1.promptTokens }, completionTokens: results.reduce(0) { $0 + $1.completionTokens },
                    engineMilliseconds: Double(MonotonicClock.nanoseconds() - started) / 1e6, worker: workerLabel, engine: engine)
    }
}

/// The continuous-batching mode's settings (`--engine-arg capacity=N step_us= seq_us= prefill_us=`).
public struct StepProfile: Sendable, Equatable {
    /// Sequences that run at once.
    public var capacity: Int
    /// Fixed cost of every step (a GPU's kernel launches and weight reads).
    public var stepMicroseconds: UInt64
    /// Cost per running sequence per step.
    public var sequenceMicroseconds: UInt64
    /// Cost per prompt token of a sequence in the step it joins.
    public var prefillMicrosecondsPerToken: UInt64

    public init(capacity: Int, stepMicroseconds: UInt64 = 0, sequenceMicroseconds: UInt64 = 0, prefillMicrosecondsPerToken: UInt64 = 0) {
        self.capacity = capacity
        self.stepMicroseconds = stepMicroseconds
        self.sequenceMicroseconds = sequenceMicroseconds
        self.prefillMicrosecondsPerToken = prefillMicrosecondsPerToken
    }
}

/// A bad `--engine-arg` or engine name.
public struct EngineConfigurationError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
