import CompassProtocol

/// One batch handed to an engine.
public struct EngineJob: Sendable, Equatable {
    public var batchID: String
    public var attempt: UInt32
    public var meta: BatchMeta
    /// The batch payload: a JSON array of `InferenceRequest`.
    public var payload: [UInt8]

    public init(batchID: String, attempt: UInt32, meta: BatchMeta, payload: [UInt8]) {
        self.batchID = batchID
        self.attempt = attempt
        self.meta = meta
        self.payload = payload
    }
}

/// What an engine reports to the worker that hosts it.
public enum EngineEvent: Sendable {
    /// Loaded and able to take jobs (after start or restart), and how much work it takes at once.
    case ready(detail: String, capacity: EngineCapacity)
    /// Requests of the job completed so far: the watchdog's proof of forward progress.
    case progress(batchID: String, attempt: UInt32, done: UInt32, total: UInt32)
    /// The job finished: `payload` is a JSON array of `InferenceResult`, in request order.
    case finished(batchID: String, attempt: UInt32, payload: [UInt8], stats: ResultStats)
    /// The job failed as a whole; the engine itself is still usable.
    case failed(batchID: String, attempt: UInt32, code: FailureCode, retryable: Bool, message: String)
    /// The engine is gone (crash, exit, killed); whatever it was running is lost.
    case died(code: FailureCode, message: String)
}

/// An inference engine as the worker sees it. All methods are called from the worker's thread;
/// events arrive through `takeEvents()` after `eventFD` becomes readable.
public protocol Engine: AnyObject {
    /// The engine's name (`synthetic`, `hf`, ...).
    var name: String { get }
    /// A file descriptor that is readable while events are waiting.
    var eventFD: Int32 { get }
    /// Starts (or restarts) the engine; `.ready` follows when it can take jobs.
    func start() throws
    /// Gives the engine a job. The worker keeps the engine's work within its `EngineCapacity`.
    func submit(_ job: EngineJob)
    /// Asks the engine to abandon a job; it answers with `.failed(code: .cancelled)` or its result.
    func cancel(batchID: String, attempt: UInt32)
    /// The events since the last call, oldest first.
    func takeEvents() -> [EngineEvent]
    /// Stops the engine and everything it started. Safe to call more than once.
    func stop()
}
